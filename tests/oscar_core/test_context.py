"""The context model (oscar_core/context.py, context_coder.py, fitting.py): exact integer
frequencies, causal order, round trips, golden bytes, hostile payloads, the per-stream choice
of model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from oscar_core import bitstream, context_coder
from oscar_core import context as ctx
from oscar_core.bitstream import ProbabilityModel
from oscar_core.context import (
    FREQ_BITS,
    N_CLASSES,
    ContextModel,
    RateContext,
    context_class,
    neighbours,
)
from oscar_core.context_coder import ContextCoder, StreamCoder, wavefronts
from oscar_core.entropy import IndexCoder, max_payload_bytes, uniform_pmf
from oscar_core.errors import BitstreamError
from oscar_core.fitting import estimate_rate_context, quantise_rows, spherical_kmeans

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def integer_row(p: np.ndarray, total: int = 1 << 16) -> np.ndarray:
    """Positive integers (K,) -> integers proportional to them summing to ``total``."""
    row = total * p // p.sum()
    row[-1] += total - row.sum()
    return row


def handmade(K: int = 8) -> RateContext:
    """Integer tables written by hand (no fitting): groups of two codes; a table row puts
    half its mass on its group's codes; weights vary with the class."""
    groups = np.arange(K) // 2
    G = int(groups.max()) + 1
    static = integer_row(np.arange(1, K + 1))
    tables = np.empty((4, G + 1, K), dtype=np.int64)
    for n in range(4):
        for g in range(G + 1):
            p = np.full(K, n + 1)
            p[groups == g] += K  # row G (absent): no group gets the bonus
            tables[n, g] = integer_row(p)
    weights = np.empty((N_CLASSES, 9), dtype=np.int64)
    for c in range(N_CLASSES):
        w = np.array([16, 40, 40, 20, 20, 30, 30, 30, 30])
        if c & 1:  # L = T: trust the copy of L more
            w[5] += 20
            w[3] -= 20
        weights[c] = w
    return RateContext(groups, static, tables, weights)


def smooth_grid(h: int, w: int, K: int, seed: int = 0) -> np.ndarray:
    """Index grids with the structure of real ones: blocks of repeated codes, drifting."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, K, size=(h // 3 + 2, w // 3 + 2))
    grid = np.repeat(np.repeat(coarse, 3, axis=0), 3, axis=1)[:h, :w]
    noise = rng.random((h, w)) < 0.15
    return np.where(noise, rng.integers(0, K, size=(h, w)), grid)


@pytest.fixture(scope="module")
def fitted() -> RateContext:
    K = 40
    grids = [smooth_grid(24, 30, K, seed=s) for s in range(8)]
    codewords = np.random.default_rng(0).normal(size=(K, 8))
    return estimate_rate_context(grids, K, codewords)


def all_neighbours(grid: np.ndarray) -> np.ndarray:
    h, w = grid.shape
    padded = np.full((h + 1, w + 2), -1, dtype=np.int64)
    padded[1:, 1:-1] = grid
    i, j = (a.reshape(-1) for a in np.mgrid[0:h, 0:w])
    return neighbours(padded, i, j)


# ---------------------------------------------------------------- frequencies


@pytest.mark.parametrize("which", ["handmade", "fitted"])
def test_frequency_rows_are_exact_integers_summing_to_2_24(which, fitted):
    tables = handmade() if which == "handmade" else fitted
    grid = smooth_grid(17, 23, tables.K, seed=1)
    nb = all_neighbours(grid)
    f = tables.frequencies(nb)
    assert f.dtype == np.float64 and f.shape == (grid.size, tables.K)
    assert np.array_equal(f, np.round(f)) and f.min() >= 1
    assert np.all(f.astype(np.int64).sum(axis=1) == 1 << FREQ_BITS)
    # the single-symbol form agrees with the rows, exactly
    x = grid.reshape(-1)
    np.testing.assert_array_equal(tables.frequency_of(nb, x), f[np.arange(x.size), x])


def test_frequencies_do_not_depend_on_the_batch(fitted):
    nb = all_neighbours(smooth_grid(12, 15, fitted.K, seed=2))
    whole = fitted.frequencies(nb)
    rng = np.random.default_rng(0)
    for _ in range(5):  # any subset, in any order, gives the same rows
        pick = rng.permutation(nb.shape[0])[: rng.integers(1, nb.shape[0])]
        np.testing.assert_array_equal(fitted.frequencies(nb[pick]), whole[pick])
    np.testing.assert_array_equal(fitted.frequencies(nb[3:4]), whole[3:4])


def test_context_class_bits():
    nb = np.array([[5, 5, 5, 5], [-1, -1, -1, -1], [1, 2, 3, 4], [7, 3, 7, -1], [2, -1, -1, -1]])
    assert context_class(nb).tolist() == [0b11111, 0b11100000, 0, 0b10000010, 0b11000000]
    assert context_class(nb).max() < N_CLASSES


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2), (5, 9), (9, 4)])
def test_wavefronts_are_causal_and_cover_the_grid(shape):
    h, w = shape
    step = np.full((h + 1, w + 2), -1)
    seen = []
    for t, (at, nb_at) in enumerate(wavefronts(h, w)):
        assert at.size >= 1 and nb_at.shape == (at.size, 4)
        step.reshape(-1)[at] = t
        seen += at.tolist()
        # every neighbour inside the grid is on an earlier wavefront
        earlier = step.reshape(-1)[nb_at]
        inside = (nb_at // (w + 2) >= 1) & (nb_at % (w + 2) >= 1) & (nb_at % (w + 2) <= w)
        assert np.all(earlier[inside] < t) and np.all(earlier[inside] >= 0)
    assert sorted(seen) == sorted(((1 + i) * (w + 2) + 1 + j) for i in range(h) for j in range(w))


# ---------------------------------------------------------------- coding


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (1, 9), (9, 1), (2, 3), (12, 8), (33, 17)])
@pytest.mark.parametrize("which", ["handmade", "fitted"])
def test_round_trip(shape, which, fitted):
    tables = handmade() if which == "handmade" else fitted
    coder = ContextCoder(tables)
    grid = smooth_grid(*shape, tables.K, seed=sum(shape))
    data = coder.encode(grid)
    back = coder.decode(data, *shape)
    assert back.dtype == np.int64 and back.shape == shape
    np.testing.assert_array_equal(back, grid)
    ideal = coder.ideal_bits(grid)
    assert ideal <= 8 * len(data) + 1 and len(data) <= ideal / 8 + 8 + 1  # seal <= 8 bytes
    assert (grid.size == 0) == (data == b"")  # no symbols, no bytes
    assert len(data) <= max_payload_bytes(grid.size, 24)


def test_golden_bytes_pin_the_frequencies_and_the_payload():
    """If this fails, streams written before no longer decode: bump the bitstream version
    (or the context format) instead of changing the numbers."""
    tables = handmade()
    grid = np.array(
        [[0, 0, 1, 1, 4, 4, 5], [0, 0, 1, 7, 4, 4, 5], [2, 2, 3, 7, 7, 6, 6], [2, 3, 3, 7, 7, 6, 0]]
    )
    f = tables.frequencies(all_neighbours(grid)).astype(np.int64)
    assert f[0, :3].tolist() == [1230560, 1478080, 1725736]  # (0, 0): no neighbours
    assert hashlib.sha256(f.tobytes()).hexdigest()[:16] == "8dd36cb71aa67ac8"
    data = ContextCoder(tables).encode(grid)
    assert data.hex() == "00fe90b93fe38a28cdaf9f1f"
    np.testing.assert_array_equal(ContextCoder(tables).decode(data, 4, 7), grid)


def test_encoder_chunking_does_not_change_the_bytes(fitted, monkeypatch):
    coder = ContextCoder(fitted)
    grid = smooth_grid(30, 40, fitted.K, seed=3)
    data = coder.encode(grid)
    monkeypatch.setattr(context_coder, "CHUNK_ELEMENTS", 7 * fitted.K)  # 7 symbols at a time
    assert coder.encode(grid) == data


def test_bad_grids_are_value_errors(fitted):
    coder = ContextCoder(fitted)
    for bad in (
        np.zeros(5, int),
        np.full((2, 2), fitted.K),
        np.full((2, 2), -1),
        np.zeros((2, 2)) + 0.5,
    ):
        with pytest.raises(ValueError):
            coder.encode(bad)


def _check_hostile(coder: ContextCoder, data: bytes, h: int, w: int) -> None:
    try:
        y = coder.decode(data, h, w)
    except BitstreamError:
        return
    assert y.shape == (h, w) and y.dtype == np.int64
    assert y.size == 0 or (y.min() >= 0 and y.max() < coder.K)


def test_hostile_payloads(fitted):
    coder = ContextCoder(fitted)
    rng = np.random.default_rng(7)
    for k in range(150):
        h, w = (int(v) for v in rng.integers(0, 20, size=2))
        n = int(rng.integers(0, 200))
        _check_hostile(coder, b"\xff" * n if k % 9 == 0 else rng.bytes(n), h, w)
    grid = smooth_grid(10, 12, fitted.K, seed=4)
    data = coder.encode(grid)
    for cut in range(len(data)):
        _check_hostile(coder, data[:cut], 10, 12)
    for extra in range(1, 20):
        _check_hostile(coder, data + rng.bytes(extra), 10, 12)
        _check_hostile(coder, data, 10, 12 + extra)
    with pytest.raises(BitstreamError, match="longer than any coding"):
        coder.decode(bytes(max_payload_bytes(6, 24) + 1), 2, 3)
    with pytest.raises(BitstreamError, match="for 0 symbols"):
        coder.decode(b"\x01", 0, 5)
    with pytest.raises(BitstreamError, match="negative"):
        coder.decode(b"", -1, 5)
    with pytest.raises(BitstreamError, match="MAX_SYMBOLS"):
        coder.decode(b"", 1 << 13, 1 << 12)


# ---------------------------------------------------------------- the choice per stream


def test_stream_coder_keeps_the_cheapest(fitted):
    static = IndexCoder(uniform_pmf(fitted.K) + np.linspace(0, 0.01, fitted.K))
    coder = StreamCoder(static, fitted)
    smooth = smooth_grid(20, 24, fitted.K, seed=5)
    noise = np.random.default_rng(5).integers(0, fitted.K, size=(20, 24))
    for grid, expected in ((smooth, ProbabilityModel.CONTEXT), (noise, None)):
        sizes = {m: len(p) for m, p in coder.payloads(grid).items()}
        model, payload = coder.encode(grid)
        assert len(payload) == min(sizes.values()) and sizes[model] == len(payload)
        assert expected is None or model == expected
        np.testing.assert_array_equal(coder.decode(model, payload, 20, 24), grid)
    # never more than uniform: iid indices do not pay for the context model
    assert len(coder.encode(noise)[1]) <= len(coder.payloads(noise)[ProbabilityModel.UNIFORM])
    without = StreamCoder(static)
    assert set(without.payloads(smooth)) == {ProbabilityModel.UNIFORM, ProbabilityModel.STATIC}
    with pytest.raises(BitstreamError, match="context probability model.*fit-context"):
        without.decode(ProbabilityModel.CONTEXT, b"", 2, 2)


# ---------------------------------------------------------------- storage and validation


def test_save_load_and_digest(tmp_path, fitted):
    model = ContextModel((handmade(), fitted), images=3)
    model.save(tmp_path)
    back = ContextModel.load(tmp_path, [8, fitted.K])
    assert back.digest() == model.digest() and back.images == 3
    for a, b in zip(back.rates, model.rates, strict=True):
        for name in ctx.FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="rate 1 has K=40, the ladder says 41"):
        ContextModel.load(tmp_path, [8, 41])
    with pytest.raises(ValueError, match="missing or unexpected for a 3-rate ladder"):
        ContextModel.load(tmp_path, [8, 40, 16])
    (tmp_path / ctx.CONTEXT_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ContextModel.load(tmp_path, [8, 40])


def test_invalid_tables_are_refused():
    good = handmade()
    fields = {name: getattr(good, name) for name in ctx.FIELDS}
    cases = [
        ("static", good.static + 1, "sum to 65536"),
        ("static", np.r_[good.static[:-1] + good.static[-1], 0], ">= 1"),
        ("tables", good.tables[:, :-1], "shape"),
        (
            "weights",
            np.r_[good.weights[:-1], [[0, 64, 32, 32, 32, 32, 32, 16, 16]]],
            "static weight",
        ),
        ("weights", good.weights + 1, "sum to 256"),
        ("groups", np.full(8, 64), "groups must lie in"),
        ("groups", np.zeros(8) + 0.5, "integers"),
    ]
    for name, value, message in cases:
        with pytest.raises(ValueError, match=message):
            RateContext(**{**fields, name: value})


# ---------------------------------------------------------------- fitting


def test_quantise_rows():
    q = quantise_rows(np.array([[0.0, 1.0, 2.0, 1e-9], [1.0, 1.0, 1.0, 1.0]]), 1000)
    assert q.sum(axis=1).tolist() == [1000, 1000] and q.min() >= 1
    assert q[1].tolist() == [250, 250, 250, 250]
    w = quantise_rows(np.array([0.0, 0.5, 0.5]), 256, np.array([1, 0, 0]))
    assert w.tolist() == [1, 128, 127] and w.sum() == 256


def test_kmeans_is_seeded_and_complete():
    x = np.random.default_rng(1).normal(size=(100, 6))
    a, b = spherical_kmeans(x, 16), spherical_kmeans(x, 16)
    np.testing.assert_array_equal(a, b)
    assert set(a.tolist()) == set(range(a.max() + 1)) and a.max() < 16
    np.testing.assert_array_equal(spherical_kmeans(x[:10], 16), np.arange(10))


def test_fitted_model_beats_the_static_pmf_on_held_out_grids(fitted):
    held_out = [smooth_grid(24, 30, fitted.K, seed=100 + s) for s in range(3)]
    static = IndexCoder(fitted.static.astype(float))
    for grid in held_out:
        context_bits = ContextCoder(fitted).ideal_bits(grid)
        assert context_bits < 0.75 * static.ideal_bits(grid)


# ---------------------------------------------------------------- the shipped model

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def shipped():
    from oscar_core import Codec

    return Codec.from_pretrained()


def test_shipped_model_has_its_context_model(shipped):
    """The ids pin the shipped weights and tables (oscar fit-context on the 580 training
    photos): the base id (weights and config) is what a format-3 stream of it is checked with."""
    assert shipped.model.context is not None and shipped.model.context.images == 580
    assert shipped.base_model_id.hex() == "1d14f45b"
    assert shipped.model_id.hex() == "64c3e09b"


PREVIOUS_BASE_ID = bytes.fromhex("dd57db94")  # the shipped model until 2026-12-03


@pytest.mark.parametrize("rate_index", [0, 2, 7])
def test_format3_golden_streams_of_the_previous_model(shipped, rate_index):
    """Streams the format-3 codec wrote with the previous shipped weights (base id dd57db94,
    tests/oscar_core/golden) still parse as format 3 under that id, and the shipped model,
    retrained since, refuses them as another model's instead of decoding them wrongly."""
    s3 = (GOLDEN / f"format3-rate{rate_index}.oscar").read_bytes()
    header, payload = bitstream.unpack(s3, PREVIOUS_BASE_ID)
    assert header.version == 3 and header.rate_index == rate_index
    assert header.probability_model == ProbabilityModel.STATIC and payload
    with pytest.raises(BitstreamError, match="another model"):
        shipped.parse(s3)


def test_shipped_context_golden_bytes(shipped):
    """The shipped tables' frequencies and payload bytes on the golden indices (the previous
    model's rate-7 codes, used here as a fixed grid; pinned: a change means the shipped
    model's streams no longer decode)."""
    grid = np.load(GOLDEN / "format3-indices.npz")["rate7"].astype(np.int64)  # (16, 24)
    tables = shipped.model.context.rates[7]
    f = tables.frequencies(all_neighbours(grid)).astype(np.int64)
    assert hashlib.sha256(f.tobytes()).hexdigest()[:16] == "c7d469228f6e3af2"
    data = ContextCoder(tables).encode(grid)
    assert hashlib.sha256(data).hexdigest()[:16] == "17620d33df5ea997" and len(data) == 292
    np.testing.assert_array_equal(ContextCoder(tables).decode(data, 16, 24), grid)
