"""The autoencoder round-trip diagnostic (jobs/eval/autoencoder.py, ``oscar eval-autoencoder``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.cli.main import main
from jobs.eval.autoencoder import round_trip_metrics
from oscar_core import Codec
from tests.conftest import smooth_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Identity(torch.nn.Module):
    """encode = decode = identity on pixels: a perfect autoencoder."""

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def test_perfect_autoencoder_scores_perfectly():
    m = round_trip_metrics(_Identity(), smooth_image(36, 52))  # cropped to 32 x 48
    assert m["psnr"] > 90 and m["cell_chroma_error"] < 1e-4
    assert m["saturation_ratio"] == pytest.approx(1.0)


def test_cli_on_a_tiny_model(tmp_path, capsys):
    model = tmp_path / "model"
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(model)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(64, 80, seed=i)).save(images / f"im{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "ae.json"
    rc = main(["eval-autoencoder", str(images), "--model", str(model), "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and "broken.png: cannot read image" in captured.err  # the others still ran
    assert "2 images: PSNR" in captured.out
    rows = json.loads(out.read_text())["images"]
    assert [r["image"] for r in rows] == ["im0", "im1"]
    assert all(np.isfinite(r["psnr"]) and r["saturation_ratio"] >= 0 for r in rows)
