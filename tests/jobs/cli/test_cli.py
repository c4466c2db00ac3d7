"""The ``oscar`` command as a user runs it: a subprocess per invocation, in a scratch directory.

Every invocation imports torch, diffusers and compressai (~7 s of CPU on a 2-core machine),
so the file does not start one subprocess per test. The module-scoped ``runs`` fixture starts
all the invocations at once, a few at a time (those that read bitstreams are queued as soon
as the first ``oscar compress`` has written them), and each test checks the results it is
about. Commands pass ``--model`` with a tiny random model saved in the scratch directory
(independent of the shipped weights), except ``test_default_model_round_trip``.
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


def oscar(cwd: Path, args: list[str]) -> Result:
    """Run ``python -m jobs.cli ARGS`` in ``cwd`` (what the ``oscar`` entry point calls)."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


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
    cut_points = {0, 1, 2, 3, 10, 15, 16, 19, 20, 21, n // 2, n - 5, n - 4, n - 1}
    for cut in sorted(c for c in cut_points if 0 <= c < n):
        out[f"trunc_{cut:03d}"] = good[:cut]
    # deterministic flips in every region: magic, version | rate, sizes, rms, payload, CRC
    for pos in (0, 1, 2, 3, 7, 8, 11, 12, 15, 16, 17, n // 2, n - 5, n - 4, n - 1):
        flipped = bytearray(good)
        flipped[pos] ^= 0x01
        out[f"flip1_at_{pos:03d}"] = bytes(flipped)
    out["version_flip"] = good[:1] + bytes([good[1] ^ 0x10]) + good[2:]  # version 4 -> 5
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
    out["empty_payload"] = good[:10] + good[-4:]  # the 10 fixed header bytes and the CRC
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


def write_fuzz_inputs(workdir: Path) -> dict[str, bytes]:
    """Damaged copies of out/a.oscar (written by ``oscar compress``) in fuzz/; name -> bytes."""
    good = (workdir / "out" / "a.oscar").read_bytes()
    foreign = Codec.from_config("oscar-tiny", seed=1).compress([smooth_image(33, 57)], 2)[0]
    variants = corrupted_variants(good, foreign)
    (workdir / "fuzz").mkdir()
    for name, data in variants.items():
        (workdir / "fuzz" / f"{name}.oscar").write_bytes(data)
    (workdir / "fuzz" / "good.oscar").write_bytes(good)
    return variants


@pytest.fixture(scope="module")
def runs(workdir) -> dict:
    """Every invocation of this file, by name (plus ``"fuzz_inputs"``: name -> bytes)."""
    m = ["--model", "model"]
    first = ["compress", *GOOD_INPUTS, "-o", "out", "--rate", "2", *m]
    independent = {
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
    }
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {"compress_index": pool.submit(oscar, workdir, first)}
        futures |= {name: pool.submit(oscar, workdir, a) for name, a in independent.items()}
        compressed = futures["compress_index"].result()
        assert compressed.returncode == 0, compressed  # everything below reads its output
        fuzz_inputs = write_fuzz_inputs(workdir)
        streams = sorted(str(p.relative_to(workdir)) for p in (workdir / "out").glob("*.oscar"))
        fuzz = [f"fuzz/{name}.oscar" for name in fuzz_inputs]
        fuzz.insert(len(fuzz) // 2, "fuzz/good.oscar")
        dependent = {
            "decompress": ["decompress", *streams, "-o", "dec", *m],
            "fuzz": ["decompress", *fuzz, "-o", "fuzz_dec", *m],
            "info": ["info", "out/a.oscar", *m],
            "info_corrupt": ["info", "fuzz/flip1_at_015.oscar", *m],
        }
        futures |= {name: pool.submit(oscar, workdir, a) for name, a in dependent.items()}
        results: dict = {name: f.result() for name, f in futures.items()}
    results["fuzz_inputs"] = fuzz_inputs
    return results


# -- compress ----------------------------------------------------------------------------
def test_compress_by_index(workdir, runs, model_id):
    result = runs["compress_index"]
    assert result.returncode == 0, result
    assert result.stderr.strip() == "", result
    for name in GOOD_INPUTS:
        stream = (workdir / "out" / f"{Path(name).stem}.oscar").read_bytes()
        header, _ = bitstream.unpack(stream, bytes.fromhex(model_id))
        assert header.rate_index == 2
    assert sorted(p.name for p in (workdir / "out").iterdir()) == sorted(
        f"{Path(n).stem}.oscar" for n in GOOD_INPUTS
    )
    assert len(result.stdout.strip().splitlines()) == len(GOOD_INPUTS)


def test_compress_by_bpp_matches_index_and_skips_bad_input(workdir, runs):
    # --rate 0.0313 is rate 2 (0.03125 bpp); a non-image among the inputs is reported in
    # one line, the others are still written, and the exit status says something failed.
    result = runs["compress_bpp_with_bad"]
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
def test_unknown_rate(workdir, runs, rate):
    result = runs[f"rate_{rate}"]
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert f'"{rate}"' in line["reason"], result
    assert not list((workdir / f"out_r{rate.replace('.', '')}").glob("*.oscar"))


def test_missing_model_dir(runs):
    result = runs["no_model"]
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert "model directory nope" in line["reason"] and "missing" in line["reason"], result


# -- decompress and info -------------------------------------------------------------------
def test_decompress_restores_sizes(workdir, runs):
    result = runs["decompress"]
    assert result.returncode == 0, result
    assert result.stderr.strip() == "", result
    for width, height, _, name in IMAGES.values():
        with Image.open(workdir / "dec" / f"{Path(name).stem}.png") as img:
            assert img.size == (width, height), name
            assert img.mode == "RGB"


def test_info(workdir, runs, model_id):
    result = runs["info"]
    assert result.returncode == 0, result
    info = json.loads(result.stdout)
    size = (workdir / "out" / "a.oscar").stat().st_size
    width, height = IMAGES["a"][:2]
    assert info["rate_index"] == 2
    assert info["nominal_bpp"] == pytest.approx(0.03125)
    assert (info["width"], info["height"]) == (width, height)
    assert info["bytes"] == size
    assert info["measured_bpp"] == pytest.approx(8 * size / (width * height), abs=1e-6)
    assert info["model_id"] == model_id  # verified by the CRC, which it seeds
    assert info["format_version"] == 4 and info["payload_bytes"] == size - 15
    assert info["probability_model"] in ("uniform", "static", "context")


def test_info_on_corrupted_file(runs):
    result = runs["info_corrupt"]
    assert result.returncode == 2, result
    assert result.stdout.strip() == ""
    (line,) = error_lines(result.stderr)
    assert line["subject"] == "fuzz/flip1_at_015.oscar" and "CRC mismatch" in line["reason"]


def test_rates_table(runs):
    result = runs["rates"]
    assert result.returncode == 0, result
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["index", "bpp", "ss", "K", "t"]
    assert [int(r.split()[0]) for r in rows] == list(range(8))
    bpps = [float(r.split()[1]) for r in rows]
    assert bpps == sorted(bpps) and len(set(bpps)) == 8


def test_rates_json(runs):
    result = runs["rates_json"]
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert [r["index"] for r in rows] == list(range(8))
    bpps = [r["nominal_bpp"] for r in rows]
    assert all(lo < hi for lo, hi in zip(bpps, bpps[1:], strict=False))
    assert bpps[2] == pytest.approx(0.03125)
    assert {"ss", "K", "t"} <= set(rows[0])


# -- fuzz: one invocation over ~60 damaged streams and one good one -------------------------
def test_decompress_fuzz(workdir, runs):
    fuzz_inputs = runs["fuzz_inputs"]
    result = runs["fuzz"]
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result
    lines = error_lines(result.stderr)
    subjects = [m["subject"] for m in lines]
    expected = [f"fuzz/{name}.oscar" for name in fuzz_inputs]
    assert sorted(subjects) == sorted(expected)  # exactly one line per bad file
    reasons = {Path(m["subject"]).stem: m["reason"] for m in lines}
    for name, reason in reasons.items():  # "cannot decode: <why>", the why not empty
        assert re.fullmatch(r"cannot decode: \S.{4,}", reason), (name, reason)
    assert "another model wrote it" in reasons["foreign_model"]
    assert "too short" in reasons["trunc_000"]
    assert "appended" in reasons["append_1_zero"]
    assert "bad magic" in reasons["flip1_at_000"]
    assert "unsupported format version 5" in reasons["version_flip"]
    n = len(fuzz_inputs["append_1_zero"]) - 1  # the good stream's length
    for pos in (1, 3, 7, 12, n - 5, n - 1):  # rate, size, rms, payload, CRC
        assert "CRC mismatch" in reasons[f"flip1_at_{pos:03d}"], pos
    assert "truncated" in reasons[f"trunc_{n - 1:03d}"]  # the CRC catches it
    # the good file in the middle of the list is still decoded
    with Image.open(workdir / "fuzz_dec" / "good.png") as img:
        assert img.size == IMAGES["a"][:2]
    assert sorted(p.name for p in (workdir / "fuzz_dec").iterdir()) == ["good.png"]


# -- the shipped model -------------------------------------------------------------------
def test_default_model_round_trip(workdir, runs):
    # compress without --model (the shipped weights); decode in-process with the same model
    result = runs["default_compress"]
    assert result.returncode == 0, result
    shipped = Codec.from_pretrained()
    for key in ("a", "gray"):
        width, height, _, name = IMAGES[key]
        stream = (workdir / "dflt" / f"{Path(name).stem}.oscar").read_bytes()
        header, _ = bitstream.unpack(stream, shipped.model_id)  # the CRC checks the model
        assert header.rate_index == 7
        (decoded,) = shipped.decompress([stream])
        assert decoded.shape == (height, width, 3)
