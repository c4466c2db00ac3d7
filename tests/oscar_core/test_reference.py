"""The reference checkpoint loader, on a synthetic checkpoint of the same key layout at tiny size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oscar_core import Codec, OscarModel, get_config
from oscar_core.reference import export_reference, load_reference, read_checkpoint
from tests.conftest import smooth_image


def sd21_layout_tiny():
    """oscar-tiny widths with the reference's structure: attention layers and LoRA adapters."""
    config = get_config("oscar-tiny")
    config.hyper.attention = True
    config.denoiser.lora_rank = 4
    return config


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    torch.manual_seed(1)
    source = OscarModel(sd21_layout_tiny()).eval()
    path = tmp_path_factory.mktemp("ref") / "oscar.pkl"
    torch.save(export_reference(source), path)
    return source, path


def test_reference_layout_keys(checkpoint_file):
    source, path = checkpoint_file
    ckpt = read_checkpoint(path, allow_pickle=True)
    assert ckpt["rank_unet"] == 4 and ckpt["embeddings"].shape == (4, 64)
    assert any(".lora_A.default_encoder." in k for k in ckpt["state_dict_unet"])
    assert any(".lora_B.default_decoder." in k for k in ckpt["state_dict_unet"])
    assert "conv_in.base_layer.weight" in ckpt["state_dict_unet"] or any(
        k.startswith("conv_in") for k in ckpt["state_dict_unet"]
    )
    assert "7.quantizer._codebook.embed" in ckpt["hyper_encoders"]
    assert "0.backbone.4.attn.in_proj_weight" in ckpt["hyper_encoders"]


def test_load_synthetic_reference_checkpoint(checkpoint_file):
    source, path = checkpoint_file
    torch.manual_seed(2)  # a different init: every loaded tensor must come from the file
    model, report = load_reference(read_checkpoint(path, allow_pickle=True), sd21_layout_tiny())
    assert report.remapped == [] and report.left_at_init == []
    src, dst = source.state_dict(), model.state_dict()
    for key in export_reference(source)["hyper_encoders"]:
        torch.testing.assert_close(dst["hypers." + key], src["hypers." + key], rtol=0, atol=0)
    torch.testing.assert_close(dst["denoiser.embedding"], src["denoiser.embedding"])
    for key in export_reference(source)["state_dict_unet"]:
        torch.testing.assert_close(dst["denoiser.unet." + key], src["denoiser.unet." + key])
    # base weights (VAE, UNet base layers) come from SD-2.1 in real use: copy them, and the
    # two models are then the same model (same id, same output)
    loaded = {"hypers." + k for k in export_reference(source)["hyper_encoders"]}
    model.load_state_dict({k: (dst[k] if k in loaded else v) for k, v in src.items()})
    assert Codec(model).model_id == Codec(source).model_id
    stream = Codec(source).compress([smooth_image(48, 64)], 5)
    np.testing.assert_array_equal(
        Codec(model).decompress(stream)[0], Codec(source).decompress(stream)[0]
    )


def test_reference_resample_slot_is_remapped(checkpoint_file):
    source, path = checkpoint_file
    ckpt = read_checkpoint(path, allow_pickle=True)
    # the reference has ONE stride-2 conv in slot 5 for rate 0; ours stacks three
    hyper = dict(ckpt["hyper_encoders"])
    hyper["0.backbone.5.weight"] = hyper.pop("0.backbone.5.0.weight")
    hyper["0.backbone.5.bias"] = hyper.pop("0.backbone.5.0.bias")
    for key in [k for k in hyper if k.startswith("0.backbone.5.")]:
        if key.startswith(("0.backbone.5.2.", "0.backbone.5.4.")):
            del hyper[key]
    model, report = load_reference({**ckpt, "hyper_encoders": hyper}, sd21_layout_tiny())
    assert report.remapped == ["0.backbone.5.weight", "0.backbone.5.bias"]
    assert "hypers.0.backbone.5.2.weight" in report.left_at_init


def test_pickle_needs_explicit_flag(checkpoint_file):
    _, path = checkpoint_file
    with pytest.raises(PermissionError, match="allow_pickle"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a loadable"):
        read_checkpoint(bad, allow_pickle=True)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "y.pkl")
    with pytest.raises(ValueError, match="missing"):
        read_checkpoint(tmp_path / "y.pkl", allow_pickle=True)
