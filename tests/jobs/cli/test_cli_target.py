"""``oscar compress --target``: each file at the lowest rate whose decoded image meets the
target, one line per file saying so, and a summary line; the streams decode with plain
``oscar decompress`` (the rate is in each stream). In-process, shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core.images import center_crop
from oscar_core.metrics import psnr

SAMPLES = Path(__file__).parents[3] / "jobs" / "samples"


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    for src in sorted(SAMPLES.glob("*.png"))[:3]:
        crop = center_crop(np.asarray(Image.open(src).convert("RGB")), 96, 128)
        Image.fromarray(crop).save(tmp_path / src.name)
        paths.append(tmp_path / src.name)
    return paths


def test_compress_to_a_target_then_decompress(photos, tmp_path, capsys):
    argv = ["compress", *map(str, photos), "-o", str(tmp_path / "z"), "--target", "psnr>=21"]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(photos) + 1
    assert lines[-1].startswith("target psnr>=21: ") and "trials/image" in lines[-1]
    streams = sorted((tmp_path / "z").glob("*.oscar"))
    assert cli_main(["decompress", *map(str, streams), "-o", str(tmp_path / "d")]) == 0
    for line, photo in zip(lines, photos, strict=False):
        decoded = np.asarray(Image.open(tmp_path / "d" / f"{photo.stem}.png"))
        value = psnr(np.asarray(Image.open(photo)), decoded)
        if line.endswith("trials)") and ": met," in line:
            assert value >= 21 - 0.05  # another batch: +-1 level in a few pixels
        else:
            assert "MISSED (top rate)" in line and "rate 7" in line


def test_rate_and_target_together_or_a_bad_target_exit_2(photos, tmp_path, capsys):
    out = str(tmp_path / "z")
    assert cli_main(["compress", str(photos[0]), "-o", out, "--target", "vmaf>=90"]) == 2
    assert "Invalid target metric" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["compress", str(photos[0]), "-o", out, "--target", "psnr>=1", "--rate", "2"])
    assert exc.value.code == 2
    assert not Path(out).exists()
