import pytest

from oscar_core.ladder import REFERENCE_LADDER, RateLadder

NOMINAL = [0.0019, 0.0098, 0.0313, 0.0430, 0.0625, 0.0781, 0.0937, 0.1250]


def ladder() -> RateLadder:
    return RateLadder(REFERENCE_LADDER)


def test_reference_table():
    lad = ladder()
    assert len(lad) == 8
    assert [r.nominal_bpp for r in lad] == pytest.approx(NOMINAL, abs=6e-5)
    assert [r.t for r in lad] == [500, 400, 310, 280, 210, 190, 170, 150]
    assert [r.downsample for r in lad] == [8, 4, 2, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("index", range(8))
def test_resolve_by_index_bpp_and_text(index):
    lad = ladder()
    assert lad.resolve(index).index == index
    assert lad.resolve(NOMINAL[index]).index == index
    assert lad.resolve(str(index)).index == index
    assert lad.resolve(f"{NOMINAL[index]:.4f}").index == index


@pytest.mark.parametrize("bad", [8, -1, 0.05, "x", "9", 0.2, True])
def test_unknown_rates_are_clear_errors(bad):
    with pytest.raises(ValueError, match="rate|Invalid|Unknown"):
        ladder().resolve(bad)


def test_at_most_picks_highest_rate_not_above():
    lad = ladder()
    assert lad.at_most(0.05).index == 3
    assert lad.at_most(1.0).index == 7
    with pytest.raises(ValueError, match="below the lowest rate"):
        lad.at_most(0.001)


def test_invalid_ladders():
    with pytest.raises(ValueError, match="ss"):
        RateLadder([(12, 256, 100)])
    with pytest.raises(ValueError, match="increasing"):
        RateLadder([(64, 256, 100), (8, 256, 500)])
    with pytest.raises(ValueError, match="timestep"):
        RateLadder([(8, 256, 1000)])


def test_with_timesteps():
    lad = ladder().with_timesteps([600, 450, 300, 280, 220, 200, 180, 160])
    assert lad[0].t == 600 and lad[7].K == 256
