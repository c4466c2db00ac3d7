"""``oscar compress`` / ``decompress`` with ``--tile`` (tiled latent coding) and ``oscar
compress --max-pixels`` (an image over it is a one-line error naming its size and the limit,
read from the header before decoding; the other files are still done). In-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core import Codec
from tests.conftest import smooth_image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = tmp_path_factory.mktemp("model") / "tiny"
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(path)
    return ["--model", str(path)]


def test_tile_round_trip_matches_the_codec(tmp_path: Path, model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = smooth_image(130, 190, seed=4)  # 192x192 padded: over a 128-px tile's pixels
    Image.fromarray(image).save("large.png")
    assert (
        cli_main(["compress", "large.png", "-o", "c", "--rate", "7", "--tile", "128", *model]) == 0
    )
    assert cli_main(["decompress", "c/large.oscar", "-o", "d", "--tile", "128", *model]) == 0
    codec = Codec.from_pretrained(model[1], tile=128)
    (stream,) = codec.compress([image], 7)
    assert Path("c/large.oscar").read_bytes() == stream
    decoded = np.asarray(Image.open("d/large.png"))
    np.testing.assert_array_equal(decoded, codec.decompress([stream])[0])
    capsys.readouterr()
    for bad in ("100", "-64", "64"):  # exit 2, one line, before any output
        assert (
            cli_main(["compress", "large.png", "-o", "e", "--rate", "7", "--tile", bad, *model])
            == 2
        )
        assert f'Invalid tile "{bad}"' in capsys.readouterr().err
    assert not Path("e").exists() or not any(Path("e").iterdir())


def test_compress_refuses_an_image_over_max_pixels(tmp_path: Path, model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(smooth_image(30, 40, seed=1)).save("small.png")
    Image.fromarray(smooth_image(100, 120, seed=2)).save("big.png")
    argv = ["compress", "small.png", "big.png", "-o", "c", "--rate", "2", "--max-pixels", "5000"]
    assert cli_main([*argv, *model]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "oscar: error: big.png: cannot read image: too many pixels: 120x100 = 12000 exceeds "
        "max_pixels = 5000 (raise it with --max-pixels)"
    ]
    assert Path("c/small.oscar").is_file() and not Path("c/big.oscar").exists()
