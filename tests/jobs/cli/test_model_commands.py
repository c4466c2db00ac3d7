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
