"""The latent autoencoder's colour skip and the stage-0 chroma term."""

from __future__ import annotations

import pytest
import torch

from jobs.common.colour import chroma_l1
from jobs.train.losses import autoencoder_loss
from oscar_core import OscarModel, get_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(colour_skip: bool) -> OscarModel:
    torch.manual_seed(0)
    config = get_config("oscar-tiny")
    config.autoencoder.colour_skip = colour_skip
    return OscarModel(config).eval()


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 64, 64, generator=g) * 2 - 1  # (B,3,H,W) in [-1,1]


def test_colour_skip_starts_as_the_plain_autoencoder():
    ae = _model(False).autoencoder
    x = _image()
    with torch.no_grad():
        z, x_hat = ae.encode(x), ae.decode(ae.encode(x))
        ae.enable_colour_skip()
        assert ae.config.colour_skip and ae.skip_in.weight.shape == (4, 3, 1, 1)
        assert torch.equal(ae.encode(x), z) and torch.equal(ae.decode(z), x_hat)


def test_colour_skip_carries_cell_colour_and_survives_save_load(tmp_path):
    model = _model(True)
    ae = model.autoencoder
    with torch.no_grad():
        ae.skip_in.weight.normal_()
        ae.skip_out.weight.normal_()
        x = _image()
        z = ae.encode(x)
        plain = ae.vae.encode(x).latent_dist.mode() * ae.scaling_factor
        cell_colour = torch.nn.functional.avg_pool2d(x, 8)  # (B,3,8,8)
        expected = plain + ae.skip_in(cell_colour) * ae.scaling_factor
        assert torch.allclose(z, expected, atol=1e-5)
        model.save_pretrained(tmp_path / "m", dtype=torch.float32)
        loaded = OscarModel.from_pretrained(tmp_path / "m").autoencoder
        assert loaded.config.colour_skip
        assert torch.allclose(loaded.decode(loaded.encode(x)), ae.decode(z), atol=1e-5)


def test_chroma_l1_ignores_luma_and_sees_hue():
    x = _image()
    assert chroma_l1(x + 0.3, x) < 1e-6  # a grey shift (R=G=B) has no Cb/Cr
    red_for_green = x.clone()
    red_for_green[:, [0, 1]] = x[:, [1, 0]]  # swap R and G
    assert chroma_l1(red_for_green, x) > 0.05


def test_chroma_term_trains_both_sides_of_the_skip():
    ae = _model(True).autoencoder.train()
    losses = autoencoder_loss(ae, _image(), w_chroma=4.0)
    assert {"l1", "1-ssim", "chroma"} <= set(losses)
    losses["total"].backward()
    for conv in (ae.skip_in, ae.skip_out):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert "chroma" not in autoencoder_loss(ae, _image(), w_chroma=0.0)
