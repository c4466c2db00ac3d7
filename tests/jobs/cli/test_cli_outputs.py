"""``oscar compress`` / ``oscar decompress`` never overwrite an output silently (issue 13,
item 4): two inputs that would write one file (``a/x.png b/x.jpg`` -> ``OUT/x.oscar``), or a
file already there without ``--overwrite``, stop the command with exit 2 and one line per
problem before any work (the model is not even loaded: ``--model`` points nowhere in the
refusals below). In-process (``jobs.cli.main``): the tiny model loads in about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core import Codec
from tests.conftest import smooth_image

NOWHERE = ["--model", "/nonexistent/model"]  # loading it would fail: proves no work started


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    for sub, name, seed in [("a", "x.png", 0), ("b", "x.jpg", 1), ("a", "y.png", 2)]:
        (tmp_path / sub).mkdir(exist_ok=True)
        Image.fromarray(smooth_image(24, 32, seed=seed)).save(tmp_path / sub / name)
    return tmp_path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = tmp_path_factory.mktemp("model") / "tiny"
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(path)
    return ["--model", str(path)]


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_two_inputs_one_output_refused_before_any_work(inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    argv = ["compress", "a/x.png", "a/y.png", "b/x.jpg", "-o", "out", "--rate", "1"]
    assert cli_main([*argv, *NOWHERE]) == 2
    assert error_lines(capsys) == [
        "oscar: error: a/x.png, b/x.jpg: both would write out/x.oscar; rename one"
    ]
    assert not (inputs / "out").exists()
    argv = ["decompress", "a/s.oscar", "b/s.oscar", "-o", "dec"]
    assert cli_main([*argv, *NOWHERE]) == 2
    assert error_lines(capsys) == [
        "oscar: error: a/s.oscar, b/s.oscar: both would write dec/s.png; rename one"
    ]


def test_existing_outputs_need_overwrite(inputs, model, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    assert cli_main(["compress", "a/x.png", "-o", "out", "--rate", "1", *model]) == 0
    first = (inputs / "out" / "x.oscar").read_bytes()
    capsys.readouterr()
    # the same file again, and another input with the same stem: both refused
    for name in ("a/x.png", "b/x.jpg"):
        assert cli_main(["compress", name, "-o", "out", "--rate", "7", *NOWHERE]) == 2
        assert error_lines(capsys) == [
            "oscar: error: out/x.oscar: exists (pass --overwrite to replace it)"
        ]
    assert (inputs / "out" / "x.oscar").read_bytes() == first
    argv = ["compress", "b/x.jpg", "-o", "out", "--rate", "7", "--overwrite", *model]
    assert cli_main(argv) == 0
    assert (inputs / "out" / "x.oscar").read_bytes() != first

    assert cli_main(["decompress", "out/x.oscar", "-o", "dec", *model]) == 0
    assert cli_main(["decompress", "out/x.oscar", "-o", "dec", *NOWHERE]) == 2
    capsys.readouterr()
    assert cli_main(["decompress", "out/x.oscar", "-o", "dec", "--overwrite", *model]) == 0
    assert Image.open(inputs / "dec" / "x.png").size == (32, 24)
