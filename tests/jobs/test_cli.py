"""The ``oscar`` command as a user runs it: a subprocess per invocation, in a scratch directory.

Every invocation imports torch, diffusers and compressai (~7 s on a 2-core CPU), so the file
does not run one subprocess per test: the invocations are started in two waves by
module-scoped fixtures (``wave1``: everything that needs only the inputs; ``wave2``: what
needs the bitstreams written by wave 1), several at a time, and each test checks the
results it is about. The commands use ``--model`` with a tiny random model saved to the
scratch directory (independent of the shipped weights), except ``test_default_model_*``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oscar_core import Codec, bitstream
from tests.conftest import smooth_image

TIMEOUT_S = 180
# name -> (width, height, PIL mode, file name); odd sizes on purpose
IMAGES = {
    "a": (57, 33, "RGB", "a.png"),
    "b": (40, 31, "RGB", "b.jpg"),
    "gray": (23, 45, "L", "gray.png"),
    "rgba": (64, 48, "RGBA", "rgba.png"),
}
GOOD_INPUTS = [spec[3] for spec in IMAGES.values()]
BAD_IMAGE = "notes.png"  # a text file with an image extension
ERROR_RE = re.compile(r"^oscar: error: (?P<subject>\S+): (?P<reason>\S.*)$")


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown by pytest when an assertion fails
        return (
            f"oscar {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


def run_all(cwd: Path, commands: dict[str, list[str]]) -> dict[str, Result]:
    """Run ``python -m jobs.cli ARGS`` for every entry, a few at a time, in ``cwd``."""

    def one(args: list[str]) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        return Result(args, proc.returncode, proc.stdout, proc.stderr)

    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(one, args) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def error_lines(stderr: str) -> list[re.Match]:
    """Every stderr line, each required to be an ``oscar: error: <subject>: <reason>`` line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    matches = [ERROR_RE.match(line) for line in lines]
    bad = [line for line, m in zip(lines, matches, strict=True) if m is None]
    assert not bad, f"stderr lines that are not one-line errors: {bad}"
    return matches  # type: ignore[return-value]


def write_inputs(root: Path) -> None:
    for seed, (width, height, mode, name) in enumerate(IMAGES.values()):
        rgb = Image.fromarray(smooth_image(height, width, seed=seed))
        image = rgb.convert(mode)
        if mode == "RGBA":
            alpha = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
            image.putalpha(Image.fromarray(alpha))
        image.save(root / name, **({"quality": 90} if name.endswith(".jpg") else {}))
    (root / BAD_IMAGE).write_text("this is not an image\n")


# -- corrupted bitstreams for the fuzz test ---------------------------------------------
def corrupted_variants(good: bytes, foreign: bytes) -> dict[str, bytes]:
    """~60 damaged copies of ``good``, each of which must be rejected with a reason."""
    rng = np.random.default_rng(2024)
    n = len(good)
    out: dict[str, bytes] = {}
    cut_points = {0, 1, 2, 3, 10, 23, 24, 25, 28, 29, n // 2, n - 5, n - 4, n - 1}
    for cut in sorted(c for c in cut_points if 0 <= c < n):
        out[f"trunc_{cut:03d}"] = good[:cut]
    # deterministic flips in every region: magic, version, model id, rate, sizes, rms,
    # varint, payload, CRC
    for pos in (0, 1, 2, 3, 7, 8, 11, 12, 15, 16, 23, 24, 25, n // 2, n - 5, n - 4, n - 1):
        flipped = bytearray(good)
        flipped[pos] ^= 0x01
        out[f"flip1_at_{pos:03d}"] = bytes(flipped)
    for i in range(12):  # random single bits
        flipped = bytearray(good)
        bit = int(rng.integers(0, 8 * n))
        flipped[bit // 8] ^= 1 << (bit % 8)
        out[f"flip1_rand_{i:02d}_bit{bit:04d}"] = bytes(flipped)
    for i in range(10):  # 2-4 random bits: always caught by CRC-32 at this length
        flipped = bytearray(good)
        bits = rng.choice(8 * n, size=int(rng.integers(2, 5)), replace=False)
        for bit in bits.tolist():
            flipped[bit // 8] ^= 1 << (bit % 8)
        out[f"flipk_{i:02d}"] = bytes(flipped)
    out["append_1_zero"] = good + b"\x00"
    out["append_4"] = good + b"OSCR"
    out["append_100_random"] = good + rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    out["doubled"] = good + good
    out["empty_payload"] = good[:24] + b"\x00" + good[-4:]
    out["foreign_model"] = foreign
    return out


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_inputs(root)
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def model_id(workdir) -> str:
    return Codec.from_pretrained(workdir / "model").model_id.hex()


@pytest.fixture(scope="module")
def wave1(workdir) -> dict[str, Result]:
    m = ["--model", "model"]
    return run_all(
        workdir,
        {
            "compress_index": ["compress", *GOOD_INPUTS, "-o", "out", "--rate", "2", *m],
            "compress_bpp_with_bad": [
                "compress",
                GOOD_INPUTS[0],
                BAD_IMAGE,
                *GOOD_INPUTS[1:],
                "-o",
                "out_bpp",
                "--rate",
                "0.0313",
                *m,
            ],
            "rate_9": ["compress", "a.png", "-o", "out_r9", "--rate", "9", *m],
            "rate_0.5": ["compress", "a.png", "-o", "out_r05", "--rate", "0.5", *m],
            "no_model": ["compress", "a.png", "-o", "out_nm", "--rate", "2", "--model", "nope"],
            "rates": ["rates", *m],
            "rates_json": ["rates", "--json", *m],
            "default_compress": ["compress", "a.png", "gray.png", "-o", "dflt", "--rate", "7"],
        },
    )


@pytest.fixture(scope="module")
def fuzz_inputs(workdir, wave1) -> dict[str, bytes]:
    """Write the damaged streams to fuzz/ (from wave 1's out/a.oscar); name -> bytes."""
    assert wave1["compress_index"].returncode == 0, wave1["compress_index"]
    good = (workdir / "out" / "a.oscar").read_bytes()
    foreign = Codec.from_config("oscar-tiny", seed=1).compress([smooth_image(33, 57)], 2)[0]
    variants = corrupted_variants(good, foreign)
    (workdir / "fuzz").mkdir()
    for name, data in variants.items():
        (workdir / "fuzz" / f"{name}.oscar").write_bytes(data)
    (workdir / "fuzz" / "good.oscar").write_bytes(good)
    return variants


@pytest.fixture(scope="module")
def wave2(workdir, wave1, fuzz_inputs) -> dict[str, Result]:
    m = ["--model", "model"]
    streams = sorted(str(p.relative_to(workdir)) for p in (workdir / "out").glob("*.oscar"))
    fuzz = [f"fuzz/{name}.oscar" for name in fuzz_inputs]
    fuzz.insert(len(fuzz) // 2, "fuzz/good.oscar")
    return run_all(
        workdir,
        {
            "decompress": ["decompress", *streams, "-o", "dec", *m],
            "fuzz": ["decompress", *fuzz, "-o", "fuzz_dec", *m],
            "info": ["info", "out/a.oscar", *m],
            "info_corrupt": ["info", "fuzz/flip1_at_016.oscar", *m],
            "default_decompress": ["decompress", "dflt/a.oscar", "dflt/gray.oscar", "-o", "dd"],
        },
    )


# -- compress ----------------------------------------------------------------------------
def test_compress_by_index(workdir, wave1):
    result = wave1["compress_index"]
    assert result.returncode == 0, result
    assert result.stderr.strip() == "", result
    for name in GOOD_INPUTS:
        stream = (workdir / "out" / f"{Path(name).stem}.oscar").read_bytes()
        header, _ = bitstream.unpack(stream)
        assert header.rate_index == 2
    assert sorted(p.name for p in (workdir / "out").iterdir()) == sorted(
        f"{Path(n).stem}.oscar" for n in GOOD_INPUTS
    )
    assert len(result.stdout.strip().splitlines()) == len(GOOD_INPUTS)


def test_compress_by_bpp_matches_index_and_skips_bad_input(workdir, wave1):
    # --rate 0.0313 is rate 2 (0.03125 bpp); a non-image among the inputs is reported in
    # one line, the others are still written, and the exit status says something failed.
    result = wave1["compress_bpp_with_bad"]
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert line["subject"] == BAD_IMAGE and "cannot read image" in line["reason"]
    assert "Traceback" not in result.stderr
    for name in GOOD_INPUTS:
        stem = Path(name).stem
        by_bpp = (workdir / "out_bpp" / f"{stem}.oscar").read_bytes()
        assert by_bpp == (workdir / "out" / f"{stem}.oscar").read_bytes(), name
    assert not (workdir / "out_bpp" / f"{Path(BAD_IMAGE).stem}.oscar").exists()


@pytest.mark.parametrize("rate", ["9", "0.5"])
def test_unknown_rate(workdir, wave1, rate):
    result = wave1[f"rate_{rate}"]
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert f'"{rate}"' in line["reason"], result
    assert not list((workdir / f"out_r{rate.replace('.', '')}").glob("*.oscar"))


def test_missing_model_dir(wave1):
    result = wave1["no_model"]
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert "model directory nope" in line["reason"] and "missing" in line["reason"], result


# -- decompress and info -------------------------------------------------------------------
def test_decompress_restores_sizes(workdir, wave2):
    result = wave2["decompress"]
    assert result.returncode == 0, result
    assert result.stderr.strip() == "", result
    for width, height, _, name in IMAGES.values():
        with Image.open(workdir / "dec" / f"{Path(name).stem}.png") as img:
            assert img.size == (width, height), name
            assert img.mode == "RGB"


def test_info(workdir, wave2, model_id):
    result = wave2["info"]
    assert result.returncode == 0, result
    info = json.loads(result.stdout)
    size = (workdir / "out" / "a.oscar").stat().st_size
    width, height = IMAGES["a"][:2]
    assert info["rate_index"] == 2
    assert info["nominal_bpp"] == pytest.approx(0.03125)
    assert (info["width"], info["height"]) == (width, height)
    assert info["bytes"] == size
    assert info["measured_bpp"] == pytest.approx(8 * size / (width * height), abs=1e-6)
    assert info["model_id"] == model_id and info["model_matches"] is True


def test_info_on_corrupted_file(wave2):
    result = wave2["info_corrupt"]
    assert result.returncode == 2, result
    assert result.stdout.strip() == ""
    (line,) = error_lines(result.stderr)
    assert line["subject"] == "fuzz/flip1_at_016.oscar" and "CRC mismatch" in line["reason"]


def test_rates_table(wave1):
    result = wave1["rates"]
    assert result.returncode == 0, result
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["index", "bpp", "ss", "K", "t"]
    assert [int(r.split()[0]) for r in rows] == list(range(8))
    bpps = [float(r.split()[1]) for r in rows]
    assert bpps == sorted(bpps) and len(set(bpps)) == 8


def test_rates_json(wave1):
    result = wave1["rates_json"]
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert [r["index"] for r in rows] == list(range(8))
    bpps = [r["nominal_bpp"] for r in rows]
    assert all(lo < hi for lo, hi in zip(bpps, bpps[1:], strict=False))
    assert bpps[2] == pytest.approx(0.03125)
    assert {"ss", "K", "t"} <= set(rows[0])


# -- fuzz: one invocation over ~60 damaged streams and one good one -------------------------
def test_decompress_fuzz(workdir, wave2, fuzz_inputs):
    result = wave2["fuzz"]
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result
    lines = error_lines(result.stderr)
    subjects = [m["subject"] for m in lines]
    expected = [f"fuzz/{name}.oscar" for name in fuzz_inputs]
    assert sorted(subjects) == sorted(expected)  # exactly one line per bad file
    reasons = {Path(m["subject"]).stem: m["reason"] for m in lines}
    for name, reason in reasons.items():
        assert reason.startswith("cannot decode: ") and len(reason) > len("cannot decode: x")
    assert "written by model" in reasons["foreign_model"]
    assert "too short" in reasons["trunc_000"]
    assert "trailing bytes" in reasons["append_1_zero"]
    assert "bad magic" in reasons["flip1_at_000"]
    assert "unsupported format version" in reasons["flip1_at_002"]
    n = len(fuzz_inputs["append_1_zero"]) - 1  # the good stream's length
    for pos in (3, 12, 16, n - 5, n - 1):  # model id, size, rms, payload, CRC
        assert "CRC mismatch" in reasons[f"flip1_at_{pos:03d}"], pos
    assert "truncated" in reasons[f"trunc_{n - 1:03d}"]
    # the good file in the middle of the list is still decoded
    with Image.open(workdir / "fuzz_dec" / "good.png") as img:
        assert img.size == IMAGES["a"][:2]
    assert sorted(p.name for p in (workdir / "fuzz_dec").iterdir()) == ["good.png"]


# -- the shipped model -------------------------------------------------------------------
def test_default_model_round_trip(workdir, wave1, wave2):
    compressed = wave1["default_compress"]
    assert compressed.returncode == 0, compressed
    shipped = Codec.from_pretrained()  # the model used when --model is not given
    header, _ = bitstream.unpack((workdir / "dflt" / "a.oscar").read_bytes())
    assert header.model_id == shipped.model_id and header.rate_index == 7
    decompressed = wave2["default_decompress"]
    assert decompressed.returncode == 0, decompressed
    for key in ("a", "gray"):
        width, height, _, name = IMAGES[key]
        with Image.open(workdir / "dd" / f"{Path(name).stem}.png") as img:
            assert img.size == (width, height)
