"""``oscar fit-context``: fits the context model of a model directory from images, only the
tables change (the weights file, the pixels and the base id stay), ``oscar info`` names the
probability model of a stream."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from jobs.cli.main import main
from oscar_core import Codec
from tests.conftest import smooth_image


def test_fit_context_command(tmp_path, capsys):
    model = tmp_path / "model"
    Codec.from_config("oscar-tiny", seed=3).model.save_pretrained(model)
    weights = (model / "model.safetensors").read_bytes()
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 96 + 32 * i, seed=60 + i)).save(images / f"{i}.png")
    before = Codec.from_pretrained(model)
    cache = tmp_path / "indices.npz"
    args = ["fit-context", "--model", str(model), "--data", str(images), "--cache", str(cache)]
    assert main(args) == 0
    out = capsys.readouterr().out
    after = Codec.from_pretrained(model)
    assert f"model id {before.model_id.hex()} -> {after.model_id.hex()}" in out
    assert "rate 7 (K=256)" in out and cache.is_file()
    assert (model / "model.safetensors").read_bytes() == weights  # only the tables are new
    assert after.base_model_id == before.model_id != after.model_id
    assert after.model.context.images == 3
    # the cached indices give the same tables
    digest = after.model.context.digest()
    assert main(args) == 0
    assert Codec.from_pretrained(model).model.context.digest() == digest
    # oscar info names the probability model of a stream
    image = smooth_image(64, 96, seed=61)
    (tmp_path / "a.oscar").write_bytes(after.compress([image], 7)[0])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.oscar"), "--model", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == 4 and info["probability_model"] in (
        "context",
        "static",
        "uniform",
    )
    # the pixels never change: the same indices decode as before the fit
    (s_before,) = before.compress([image], 7)
    np.testing.assert_array_equal(
        after.decompress([after.compress([image], 7)[0]])[0], before.decompress([s_before])[0]
    )
    assert main(["fit-context", "--model", str(model), "--data", str(tmp_path / "none")]) == 2


def test_take_rates_command(tmp_path, capsys):
    """``oscar take-rates``: the taken rate's streams and pixels become the source's, the
    other rates' stay the model's; a source with another denoiser is refused (exit 2)."""
    import shutil

    import torch

    from oscar_core import OscarModel

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(smooth_image(64, 96, seed=70)).save(images / "0.png")
    model = tmp_path / "model"
    Codec.from_config("oscar-tiny", seed=3).model.save_pretrained(model)
    assert main(["fit-context", "--model", str(model), "--data", str(images)]) == 0
    # the source: the same model with rate 2's hyper-encoder and t_r changed (a refinement)
    refined = OscarModel.from_pretrained(model)
    with torch.no_grad():
        for p in refined.hypers[2].parameters():
            p.add_(0.05 * torch.randn_like(p))
    refined.config.ladder[2][2] += 40
    source = tmp_path / "source"
    refined.save_pretrained(source)
    image = smooth_image(64, 96, seed=71)
    before, theirs = Codec.from_pretrained(model), Codec.from_pretrained(source)
    assert before.compress([image], 2) != theirs.compress([image], 2)  # the change shows
    capsys.readouterr()
    assert main(["take-rates", "--model", str(model), "--from", str(source), "--rates", "2"]) == 0
    after = Codec.from_pretrained(model)
    assert f"model id {before.model_id.hex()} -> {after.model_id.hex()}" in capsys.readouterr().out
    assert after.model.ladder[2].t == theirs.model.ladder[2].t
    assert after.model.config.notes["took_rates"] == {"rates": [2], "from": theirs.model_id.hex()}
    (s_after,), (s_theirs,) = after.compress([image], 2), theirs.compress([image], 2)
    assert s_after[:-4] == s_theirs[:-4]  # all but the CRC (seeded by the model id)
    np.testing.assert_array_equal(after.decompress([s_after])[0], theirs.decompress([s_theirs])[0])
    for rate in (0, 7):  # the other rates are the model's
        (a,), (b,) = after.compress([image], rate), before.compress([image], rate)
        assert a[:-4] == b[:-4]
        np.testing.assert_array_equal(after.decompress([a])[0], before.decompress([b])[0])
    # a source without a context model: the model's is dropped, with a message
    shutil.copytree(source, tmp_path / "bare")
    (tmp_path / "bare" / "context.safetensors").unlink()
    assert main(["take-rates", "--model", str(model), "--from", str(tmp_path / "bare"),
                 "--rates", "2"]) == 0  # fmt: skip
    assert "fit it again" in capsys.readouterr().out
    assert OscarModel.from_pretrained(model).context is None
    # another denoiser: refused before anything is written
    other = tmp_path / "other"
    Codec.from_config("oscar-tiny", seed=4).model.save_pretrained(other)
    weights = (model / "model.safetensors").read_bytes()
    assert main(["take-rates", "--model", str(model), "--from", str(other), "--rates", "2"]) == 2
    assert "differ" in capsys.readouterr().err
    assert (model / "model.safetensors").read_bytes() == weights
