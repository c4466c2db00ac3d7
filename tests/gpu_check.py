"""``make gpu-check``: every CUDA test, then a timed full-size ``oscar-sd21`` round trip.

    python -m tests.gpu_check        (OUT=dir to choose where the summary goes)

Without a CUDA device it prints "no CUDA device: nothing to check" and exits 0, so it is
safe anywhere. With one:

1. ``pytest -m cuda`` in a subprocess (tests/oscar_core/test_cuda.py and the other tests
   marked ``cuda``), with ``-s`` so the measured CPU-vs-CUDA pixel differences are printed;
2. ``oscar-sd21`` at full size with random weights (seeded: the same weights on every
   machine with the same torch), one 256x256 image at the lowest and highest rate, fp32 and
   (where the GPU has it) bf16: model build, codec init, first and repeated compress and
   decompress times, peak GPU memory (``torch.cuda.max_memory_allocated``), whether the
   repeats are bit-identical, and SHA-256s of the stream and the pixels (compare them
   between GPUs: docs/gpu.md says what may differ).

Writes ``gpu_check.json`` (the summary), ``pytest-cuda.log`` and ``pytest-cuda.xml`` (JUnit)
to ``$OUT``, else ``out/gpu-check/``. Exit status: 0 when all passed (or no GPU), 1 when a
test failed, none was collected, or a fp32 repeat was not bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

NO_CUDA = "no CUDA device: nothing to check"
SIZE = 256  # pixels per side of the sd21 round trip (32x32 latent)
RATES = (0, 7)
REPO = Path(__file__).resolve().parents[1]


def out_dir() -> Path:
    path = Path(os.environ.get("OUT") or REPO / "out" / "gpu-check")
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> dict[str, Any]:
    """The GPU and the software that decide kernel choice (docs/gpu.md)."""
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        driver = None
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus_visible": torch.cuda.device_count(),
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16": torch.cuda.is_bf16_supported(),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
    }


def run_cuda_tests(out: Path) -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess, its output echoed and saved."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-s", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={out / 'pytest-cuda.xml'}"]
    print("gpu-check: " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    lines = []
    with (
        open(out / "pytest-cuda.log", "w") as log,
        subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        for line in proc.stdout:  # type: ignore[union-attr]
            sys.stdout.write(line)
            log.write(line)
            lines.append(line.rstrip("\n"))
    return {
        "returncode": proc.returncode,  # 5: no test collected
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": lines[-1] if lines else "",
        # the pixel differences the tests measured (their prints)
        "measured": [ln for ln in lines if " decode: max " in ln],
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def round_trip(config: str = "oscar-sd21", device: str = "cuda", size: int = SIZE) -> dict:
    """A registered config with random, seeded weights on ``device``: build, init, first and
    repeated compress / decompress times, peak GPU memory, repeatability. (``device="cpu"``
    and a small config: the test of this script on a machine without CUDA.)"""
    from oscar_core import Codec, OscarModel, get_config
    from tests.conftest import smooth_image

    cuda = torch.device(device).type == "cuda"

    def timed(fn: Any) -> tuple[Any, float]:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = fn()
        if cuda:
            torch.cuda.synchronize()
        return value, round(time.perf_counter() - t0, 3)

    # peft warns on every adapter after the first; three adapters are intended (denoiser.py)
    warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")
    torch.manual_seed(0)
    model, build_s = timed(lambda: OscarModel(get_config(config)))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fp32, init_s = timed(lambda: Codec(model, device=device, batch_size=1))
    summary: dict[str, Any] = {
        "config": config,
        "size": [size, size],
        "build_model_s": build_s,
        "codec_init_s": init_s,  # model.to(device) + hashing every weight for the model id
        "weights_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None,
        "model_id": fp32.model_id.hex(),
        "runs": [],
    }
    codecs = [fp32]
    if cuda and torch.cuda.is_bf16_supported():
        codecs.append(Codec(model, device=device, batch_size=1, precision="bf16"))
    image = smooth_image(size, size, seed=0)
    for codec in codecs:
        for rate in RATES:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            (stream,), compress_s = timed(lambda c=codec, r=rate: c.compress([image], r))
            (again,), compress_warm_s = timed(lambda c=codec, r=rate: c.compress([image], r))
            (pixels,), decompress_s = timed(lambda c=codec, s=stream: c.decompress([s]))
            (pixels2,), decompress_warm_s = timed(lambda c=codec, s=stream: c.decompress([s]))
            run = {
                "precision": codec.precision,
                "rate": rate,
                "compress_s": compress_s,
                "compress_warm_s": compress_warm_s,
                "decompress_s": decompress_s,
                "decompress_warm_s": decompress_warm_s,
                "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if cuda
                else None,
                "bytes": len(stream),
                "stream_sha256": sha256(stream),
                "pixels_sha256": sha256(pixels.tobytes()),
                "repeat_stream_identical": again == stream,
                "repeat_pixels_identical": bool((pixels == pixels2).all()),
            }
            print(f"gpu-check: {config} " + json.dumps(run), flush=True)
            summary["runs"].append(run)
    return summary


def main() -> int:
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    out = out_dir()
    summary: dict[str, Any] = {"environment": environment()}
    print("gpu-check: " + json.dumps(summary["environment"]), flush=True)
    summary["cuda_tests"] = run_cuda_tests(out)
    try:
        summary["sd21"] = round_trip("oscar-sd21", "cuda", SIZE)
    except Exception as exc:  # noqa: BLE001 - recorded in the summary, then exit 1
        summary["sd21"] = {"error": f"{type(exc).__name__}: {exc}"}
    failures = []
    if summary["cuda_tests"]["returncode"] != 0:
        failures.append(f"pytest -m cuda exited {summary['cuda_tests']['returncode']}")
    if "error" in summary["sd21"]:
        failures.append(f"sd21 round trip: {summary['sd21']['error']}")
    for run in summary["sd21"].get("runs", []):
        if run["precision"] == "fp32" and not (
            run["repeat_stream_identical"] and run["repeat_pixels_identical"]
        ):
            failures.append(f"sd21 fp32 rate {run['rate']}: a repeat was not bit-identical")
    summary["failures"] = failures
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu-check: summary in {out / 'gpu_check.json'}")
    for failure in failures:
        print(f"gpu-check: FAILED {failure}", file=sys.stderr)
    print("gpu-check: " + ("FAILED" if failures else "all passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
