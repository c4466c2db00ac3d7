"""Bench section 12's probe (``jobs/bench/large_images.py``), run in this process on a small
image with small tiles: the figures it reports, and the mirrored-out test image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jobs.bench.large_images import large_image, large_probe
from oscar_core import DEFAULT_MODEL_DIR
from tests.conftest import smooth_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_large_image_mirrors_the_source_out(tmp_path):
    source = smooth_image(40, 60, seed=1)
    Image.fromarray(source).save(tmp_path / "s.png")
    big = large_image(str(tmp_path / "s.png"), 150)
    assert big.shape == (150, 150, 3) and big.flags.c_contiguous
    np.testing.assert_array_equal(big[:40, :60], source)
    np.testing.assert_array_equal(big[40:80, :60], source[::-1])  # mirrored, not tiled


def test_probe_reports_each_step(tmp_path):
    Image.fromarray(smooth_image(64, 96, seed=2)).save(tmp_path / "s.png")
    args = (str(DEFAULT_MODEL_DIR), str(tmp_path / "s.png"), 200, 128, 0, 1)
    encoded = large_probe(*args)
    decoded = large_probe(*args, stream=encoded["stream"])
    assert encoded["image_mib"] == pytest.approx(200 * 200 * 3 / 2**20)
    for step, figures in (("encode", encoded), ("decode", decoded)):
        assert figures[f"{step}_seconds"] > 0 and figures[f"{step}_peak_mib"] >= 0
    assert encoded["encode_working_mib"] == encoded["encode_peak_mib"]
    # working memory: decode's peak less the decoded image it returns
    assert decoded["decode_working_mib"] == pytest.approx(
        decoded["decode_peak_mib"] - decoded["image_mib"]
    )
    assert len(encoded["stream"]) > 15 and 10 < decoded["psnr"] < 60
