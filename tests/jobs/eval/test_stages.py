"""``oscar eval-stages``: the stage-by-stage ablation on the shipped model, checked against
what each stage is (the codec row is the real round trip; the autoencoder row the ceiling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from jobs.eval.stages import STAGES, stage_psnrs
from oscar_core import Codec
from oscar_core.images import center_crop
from oscar_core.metrics import psnr

SAMPLES = Path(__file__).parents[3] / "jobs" / "samples"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    image = np.asarray(Image.open(SAMPLES / "kodim23.png").convert("RGB"))
    return center_crop(image, 120, 136)  # sides not multiples of 64: padding is exercised


def test_stages_of_the_shipped_model(photo):
    codec = Codec.from_pretrained(batch_size=1)
    low, high = stage_psnrs(codec, photo, 0), stage_psnrs(codec, photo, 7)
    codec_row = psnr(photo, codec.decompress(codec.compress([photo], 7))[0])
    assert high["codec"] == pytest.approx(codec_row)  # the product, as users get it
    for row in (low, high):
        assert row["autoencoder"] > row["coarse"]  # the code loses, nothing beats the ceiling
        assert row["codec"] > row["coarse"] - 0.5  # the denoiser does not lose what is coded
        assert 0 < row["cos_x_t"] < 1 and 0 < row["cos_z0_hat"] < 1
    assert high["coarse"] > low["coarse"] and high["cos_x_t"] > low["cos_x_t"]  # more bits


def test_cli_writes_means_and_rows(photo, tmp_path, capsys):
    Image.fromarray(photo).save(tmp_path / "a.png")
    out = tmp_path / "stages.json"
    rc = cli_main(["eval-stages", str(tmp_path / "a.png"), "--rates", "3", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["mean"]) == {"3"} and len(data["rows"]) == 1
    assert set(STAGES) <= set(data["rows"][0]) and "perfect" in capsys.readouterr().out
    assert cli_main(["eval-stages", str(tmp_path / "missing.png")]) == 2
