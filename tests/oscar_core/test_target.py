"""Quality-targeted encoding on real photos with the shipped model: every image meets its
target at the lowest rate that does (checked against coding at every rate), in few trials."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oscar_core.codec import Codec
from oscar_core.images import center_crop
from oscar_core.target import Target, compress_to_target

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
