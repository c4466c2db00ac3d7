"""Importing the published OSCAR, checked against the reference forward re-stated from the notes.

A small SD-2.1-shaped base is saved as a diffusers directory, a reference model
(``tests/reference_fixtures.py``: the HEAD hyper-encoder slot table, peft adapters, the
reference's checkpoint dict) is exported as the reference saves it, imported through the CLI,
and at all 8 rates ``Codec`` must decode what the reference forward computes. The one
intended difference: the decoder rescales z~ to the *transmitted* per-channel RMS of z0
(1/16-octave log codes in the header) where the reference uses the exact norm; with the
transmitted norm both agree to one 8-bit level, with the exact one the test measures by how
much they differ (printed with ``-s``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from jobs.cli.main import main
from oscar_core import Codec, OscarModel, bitstream
from oscar_core.hyper import OLD_LAYOUT
from oscar_core.images import to_tensor, to_uint8
from oscar_core.reference import export_reference, load_reference, read_checkpoint
from tests.conftest import smooth_image
from tests.reference_fixtures import ReferenceOscar, make_sd21_dir

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
H, W = 64, 128  # no padding at any rate (rate 0 needs multiples of 64)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(reference model, checkpoint path, sd21 dir, imported model dir)."""
    root = tmp_path_factory.mktemp("ref")
    sd21 = make_sd21_dir(root / "sd21")
    ref = ReferenceOscar(sd21)
    path = root / "oscar.pkl"
    torch.save(ref.checkpoint(), path)
    out = root / "model"
    args = ["import-reference", "--sd21", str(sd21), "--checkpoint", str(path)]
    assert main([*args, "--allow-pickle", "--out", str(out)]) == 0
    return ref, path, sd21, out


@pytest.fixture(scope="module")
def codec(imported):
    return Codec.from_pretrained(imported[3], batch_size=1)


def test_codec_decodes_what_the_reference_computes_at_every_rate(imported, codec):
    ref = imported[0]
    image = smooth_image(H, W, seed=3)
    x = to_tensor([image])  # (1,3,H,W) in [-1,1]
    exact_diffs = []
    for r in range(8):
        stream = codec.compress([image], r)[0]
        header, _ = bitstream.unpack(stream, codec.model_id)
        ours = codec.decompress([stream])[0].astype(int)
        # the reference forward with the transmitted norms: the same computation
        sent = torch.tensor([header.rms], dtype=torch.float32)
        theirs = to_uint8(ref(x, r, norms=sent))[0].astype(int)
        assert np.abs(ours - theirs).max() <= 1, f"rate {r}"
        assert np.mean(ours != theirs) < 0.01, f"rate {r}"
        # with the exact norms (what the reference does, sending nothing): rounding only
        exact = to_uint8(ref(x, r))[0].astype(int)
        exact_diffs.append(float(np.abs(ours - exact).mean()))
    print(f"\nmean |ours - reference with exact norms| per rate (8-bit levels): {exact_diffs}")
    assert max(exact_diffs) < 4.0  # 1/16-octave norms: a few levels at most, never garbage


def test_merged_and_unmerged_lora_decode_alike(imported, codec):
    ref, path, sd21, _ = imported
    unmerged, report = load_reference(read_checkpoint(path, allow_pickle=True), sd21)
    assert not report.merged and unmerged.config.denoiser.lora_rank == 4
    image = smooth_image(H, W, seed=4)
    for r in (0, 3, 7):
        parsed = [codec.parse(s) for s in codec.compress([image], r)]
        merged = codec.decode_parsed(parsed)[0].astype(int)
        lora = Codec(unmerged).decode_parsed(parsed)[0].astype(int)
        assert np.abs(merged - lora).max() <= 1


def test_model_dir_is_self_contained_and_path_free(imported, codec, tmp_path):
    _, _, sd21, out = imported
    text = (out / "config.json").read_text()
    assert str(sd21) not in text and "pretrained_dir" not in text and str(out) not in text
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(out, copy)
    config = json.loads((copy / "config.json").read_text())
    config["name"], config["notes"] = "my-copy", {"edited": "2026-12-02"}  # not the id's business
    (copy / "config.json").write_text(json.dumps(config))
    moved = Codec.from_pretrained(copy)
    assert moved.model_id == codec.model_id
    streams = codec.compress([smooth_image(H, W, seed=5)], 5)
    np.testing.assert_array_equal(moved.decompress(streams)[0], codec.decompress(streams)[0])


def test_fit_entropy_changes_bytes_not_pixels(imported, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(imported[3], out)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(smooth_image(H, W, seed=10 + i)).save(images / f"{i}.png")
    before = Codec.from_pretrained(out)
    image = smooth_image(H, W, seed=11)
    s_before = before.compress([image], 7)[0]
    (tmp_path / "a.oscar").write_bytes(s_before)
    assert main(["info", str(tmp_path / "a.oscar"), "--model", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["pmf"] == "uniform"
    assert main(["fit-entropy", "--model", str(out), "--data", str(images)]) == 0
    after = Codec.from_pretrained(out)
    assert after.model_id != before.model_id and all(after.model.pmf_fitted(r) for r in range(8))
    s_after = after.compress([image], 7)[0]
    assert s_after != s_before
    np.testing.assert_array_equal(after.decompress([s_after])[0], before.decompress([s_before])[0])
    (tmp_path / "b.oscar").write_bytes(s_after)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "b.oscar"), "--model", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["pmf"] == "fitted"


def test_refusals_name_the_key_and_write_nothing(imported, tmp_path, capsys):
    _, path, sd21, _ = imported
    ckpt = read_checkpoint(path, allow_pickle=True)
    bad = dict(ckpt, hyper_encoders=dict(ckpt["hyper_encoders"]))
    bad["hyper_encoders"]["3.proj.12.weight"] = torch.zeros(4, 7, 1, 1)
    torch.save(bad, tmp_path / "bad.pkl")
    args = ["import-reference", "--sd21", str(sd21), "--allow-pickle", "--out"]
    assert main([*args, str(tmp_path / "m1"), "--checkpoint", str(tmp_path / "bad.pkl")]) == 2
    err = capsys.readouterr().err
    assert "3.proj.12.weight" in err and "(4, 7, 1, 1)" in err and "(4, 24, 1, 1)" in err
    assert not (tmp_path / "m1").exists()

    missing = dict(ckpt, state_dict_unet=dict(ckpt["state_dict_unet"]))
    lora_key = next(k for k in missing["state_dict_unet"] if "lora_B" in k)
    del missing["state_dict_unet"][lora_key]
    with pytest.raises(ValueError, match="lacks 1 weights"):
        load_reference(missing, sd21)

    old = dict(ckpt, hyper_encoders={**ckpt["hyper_encoders"],
                                     "0.backbone.4.attn.in_proj_weight": torch.zeros(3)})  # fmt: skip
    with pytest.raises(ValueError, match="5bb805c"):
        load_reference(old, sd21)
    assert "5bb805c" in OLD_LAYOUT

    assert main([*args, str(tmp_path / "m2"), "--checkpoint", str(tmp_path / "none.pkl")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    no_flag = ["import-reference", "--sd21", str(sd21), "--checkpoint", str(path)]
    assert main([*no_flag, "--out", str(tmp_path / "m3")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err


def test_old_layout_model_directory_is_refused_by_name(imported, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "old"
    shutil.copytree(imported[3], out)
    state = load_file(str(out / "model.safetensors"))
    state["hypers.0.backbone.4.attn.in_proj_weight"] = torch.zeros(3)
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="5bb805c"):
        OscarModel.from_pretrained(out)


def test_export_round_trip_keeps_the_reference_keys(imported):
    _, path, sd21, _ = imported
    ckpt = read_checkpoint(path, allow_pickle=True)
    model, _ = load_reference(ckpt, sd21)
    again = export_reference(model)
    assert set(again["hyper_encoders"]) == set(ckpt["hyper_encoders"])
    assert set(again["state_dict_unet"]) == set(ckpt["state_dict_unet"])
    for key, value in ckpt["state_dict_unet"].items():
        torch.testing.assert_close(again["state_dict_unet"][key], value, rtol=0, atol=0)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a loadable"):
        read_checkpoint(bad, allow_pickle=True)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "y.pkl")
    with pytest.raises(ValueError, match="missing"):
        read_checkpoint(tmp_path / "y.pkl", allow_pickle=True)
    with pytest.raises(PermissionError, match="allow_pickle"):
        read_checkpoint(tmp_path / "y.pkl")
