"""``make gpu-check`` (tests/gpu_check.py) where there is no GPU: the message and exit 0, and
its round trip run on the CPU with the tiny config (the GPU run uses oscar-sd21)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests import gpu_check

REPO = gpu_check.REPO


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_check.main() == 0
    assert capsys.readouterr().out == "no CUDA device: nothing to check\n"
    assert not (tmp_path / "out").exists()


def test_the_make_target_command_without_cuda(tmp_path):
    # CUDA_VISIBLE_DEVICES="": no GPU even on a machine that has one (no recursive check)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu_check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "no CUDA device: nothing to check\n")


def test_round_trip_summary_on_the_cpu():
    summary = gpu_check.round_trip("oscar-tiny", "cpu", size=64)
    assert summary["config"] == "oscar-tiny" and summary["size"] == [64, 64]
    assert [(r["precision"], r["rate"]) for r in summary["runs"]] == [("fp32", 0), ("fp32", 7)]
    for run in summary["runs"]:
        assert run["repeat_stream_identical"] and run["repeat_pixels_identical"]
        assert run["bytes"] > 0 and run["compress_s"] > 0 and run["peak_gpu_mib"] is None
        assert len(run["stream_sha256"]) == len(run["pixels_sha256"]) == 16
