"""Quality-targeted encoding on real photos with the shipped model: every image meets its
target at the lowest rate that does (checked against coding at every rate), in few trials."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oscar_core.codec import Codec
from oscar_core.images import center_crop
from oscar_core.target import (
    Outcome,
    Target,
    TargetSummary,
    compress_to_target,
    outcome_of,
    single_rate_alternative,
)

SAMPLES = Path(__file__).parents[2] / "jobs" / "samples"


@pytest.fixture(scope="module")
def shipped() -> Codec:
    return Codec.from_pretrained()


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """The four bundled Kodak photos, centre 96x128 crops (real content, quick to code)."""
    return [
        center_crop(np.asarray(Image.open(p).convert("RGB")), 96, 128)
        for p in sorted(SAMPLES.glob("*.png"))
    ]


@pytest.fixture(scope="module")
def every_rate(shipped, photos) -> list[list[float]]:
    """PSNR of each photo at each rate (the brute-force truth)."""
    out = []
    for rate in shipped.ladder:
        decoded = shipped.decompress(shipped.compress(photos, rate))
        out.append([Target("psnr", 0).measure(a, b) for a, b in zip(photos, decoded, strict=True)])
    return [list(col) for col in zip(*out, strict=True)]  # [photo][rate]


def test_lowest_rate_that_meets_the_target(shipped, photos, every_rate):
    # a target between the photos' rate-2 and rate-5 quality: different rates per photo
    value = float(np.median([row[3] for row in every_rate]))
    target = Target.parse(f"psnr>={value}")
    results = compress_to_target(shipped, photos, target)
    for row, res, photo in zip(every_rate, results, photos, strict=True):
        assert res.met and res.achieved >= value and res.trials <= 4
        decoded = shipped.decompress([res.stream])[0]
        assert abs(target.measure(photo, decoded) - res.achieved) < 0.05  # batch: +-1 level
        assert shipped.parse(res.stream).rate.index == res.rate.index
        lowest = next(r for r, q in enumerate(row) if q >= value)
        monotone = all(a <= b + 1e-9 for a, b in zip(row[:-1], row[1:], strict=True))
        if monotone:
            assert res.rate.index == lowest
        else:  # never a lower rate than one that meets it... only a higher one
            assert res.rate.index >= lowest
    assert len({r.rate.index for r in results}) > 1  # the photos get different rates


def test_unreachable_target_gets_the_top_rate_marked(shipped, photos):
    (res,) = compress_to_target(shipped, photos[:1], Target("psnr", 99))
    assert not res.met and res.rate.index == len(shipped.ladder) - 1 and res.trials == 4


def test_easy_target_gets_rate_0(shipped, photos):
    (res,) = compress_to_target(shipped, photos[:1], Target("psnr", 1))
    assert res.met and res.rate.index == 0 and res.trials == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("psnr>30x", "should be METRIC>=VALUE"),
        ("lpips>=0.1", "Invalid target metric"),
        ("psnr<=30", "should be METRIC>=VALUE"),
        ("psnr>=nan", "finite"),
    ],
)
def test_bad_targets_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Target.parse(text)


def test_parse_and_print():
    assert Target.parse(" MS-SSIM >= 0.95") == Target("ms-ssim", 0.95)
    assert str(Target.parse("ssimulacra2>=60")) == "ssimulacra2>=60"


def test_summary_prices_one_rate_for_all_from_the_trials(shipped, photos, every_rate):
    value = float(np.median([row[3] for row in every_rate]))
    target = Target("psnr", value)
    results = compress_to_target(shipped, photos, target)
    pixels = [p.shape[0] * p.shape[1] for p in photos]
    summary = TargetSummary.of(
        target, [outcome_of(r, n) for r, n in zip(results, pixels, strict=True)]
    )
    assert summary.images == len(photos) and summary.met == sum(r.met for r in results)
    assert summary.bytes == sum(len(r.stream) for r in results)
    assert summary.rates == dict(Counter(r.rate.index for r in results))
    assert summary.mean_trials == sum(r.trials for r in results) / len(results)
    # one rate for all: the highest chosen among the images that met the target
    single = summary.single_rate
    assert single.rate_index == max(r.rate.index for r in results if r.met)
    truth = shipped.compress(photos, single.rate_index)  # every image coded at that rate
    exact = [r.rate.index == single.rate_index or single.rate_index in r.tried for r in results]
    assert single.estimated == exact.count(False)
    known = sum(len(s) for s, e in zip(truth, exact, strict=True) if e)
    tried = sum(r.tried[single.rate_index][0] for r in results if single.rate_index in r.tried)
    assert tried == known  # the trials' byte counts are those of the streams
    # the others are estimated from a peer's byte ratio between two rates (here 3 of 4
    # images from one peer): 17% off on these 96x128 crops with the shipped 2b437782 (within 15% with
    # 7d2dc808), 9% on the full 768x512 images (bench section 10); the bound allows 25%
    assert abs(single.bytes - sum(len(s) for s in truth)) <= 0.25 * sum(len(s) for s in truth)
    assert summary.saving == pytest.approx(1 - summary.bytes / single.bytes)
    assert summary.to_dict()["single_rate"]["rate_index"] == single.rate_index
    assert f"{summary.met}/{summary.images} met" in summary.line()


def test_single_rate_estimate_scales_an_image_s_own_bytes():
    outcomes = [
        Outcome(rate_index=2, met=True, tried={1: (10, 20.0), 2: (30, 31.0)}, pixels=100),
        Outcome(rate_index=5, met=True, tried={3: (40, 29.0), 5: (80, 30.5)}, pixels=200),
        Outcome(rate_index=7, met=False, tried={5: (60, 25.0), 7: (90, 26.0)}, pixels=100),
        Outcome(rate_index=1, met=True, tried={1: (12, 30.2), 3: (44, 33.0)}, pixels=100),
    ]
    single = single_rate_alternative(outcomes)
    # rate 5: exact for the 2nd and 3rd; the 4th: 44 bytes at rate 3 x 80/40 (the 2nd tried
    # both); the 1st tried no rate another image tried with 5: 140 bytes / 300 px x 100 px
    assert single.rate_index == 5 and single.estimated == 2
    assert single.bytes == round(80 + 60 + 44 * 80 / 40 + 140 / 300 * 100)
    assert single_rate_alternative([]) is None
