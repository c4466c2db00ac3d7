"""GPU rules of the shard jobs, checked without a GPU or Ray: at most one GPU per worker
(refused before any work), and a worker given a GPU without CUDA fails to start with a
clear error instead of quietly running on the CPU. The end-to-end start failure on Ray's
fake GPUs is in test_jobs.py (``test_worker_given_a_gpu_without_cuda_stops_the_job``).
On a GPU (marker ``cuda``): a worker given one codes a shard on it."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.cli.main import main as cli_main
from pipeline import dispatch, placement, worker
from pipeline.contract import EncodeTask, Resources, WorkerConfig
from pipeline.dispatch import WorkersFailedToStart, check_resources
from pipeline.placement import pick_device
from pipeline.worker import ShardWorker
from tests.pipeline.shards import image_bytes, tar_bytes


@pytest.mark.parametrize("gpus", [None, 0, 0.25, 0.5, 1])
def test_one_gpu_or_a_fraction_per_worker_is_allowed(gpus):
    check_resources(Resources(workers=2, gpus_per_worker=gpus))


@pytest.mark.parametrize("gpus", [1.5, 2, 8])
def test_more_than_one_gpu_per_worker_is_refused(gpus):
    with pytest.raises(ValueError, match=rf"^--gpus-per-worker {gpus:g}: .* more than 1; "):
        check_resources(Resources(gpus_per_worker=gpus))


@pytest.mark.parametrize("gpus", [-1, math.nan])
def test_negative_or_nan_gpus_are_refused(gpus):
    with pytest.raises(ValueError, match="Invalid gpus_per_worker"):
        check_resources(Resources(gpus_per_worker=gpus))
    with pytest.raises(ValueError, match='Invalid workers "0"'):
        check_resources(Resources(workers=0))


@pytest.mark.parametrize("command", ["encode-shards", "decode-shards", "recompress"])
def test_cli_refuses_two_gpus_per_worker_before_any_work(command, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, str(tmp_path / "in" / "*.tar"), "--out", str(out), "--no-progress"]
    assert cli_main([*argv, "--gpus-per-worker", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"oscar: error: {command}: --gpus-per-worker 2: a worker runs")
    assert not out.exists()  # nothing written, not even the job config


def test_cli_reports_workers_that_cannot_start_in_one_line(monkeypatch, tmp_path, capsys):
    def no_workers(job):
        raise WorkersFailedToStart("workers failed to start: RuntimeError: no CUDA")

    monkeypatch.setattr("pipeline.runner.run_encode", no_workers)
    argv = ["encode-shards", str(tmp_path / "*.tar"), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["oscar: error: encode-shards: workers failed to start: RuntimeError: no CUDA"]


def test_pick_device_without_gpus_is_the_cpu():
    assert pick_device([]) == "cpu"


def test_pick_device_with_cuda_is_the_first_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(["3"]) == "cuda:0"  # CUDA_VISIBLE_DEVICES=3 makes it cuda:0


def test_pick_device_given_a_gpu_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(placement.FAKE_GPUS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    with pytest.raises(RuntimeError) as info:
        pick_device(["1", "2"])
    message = str(info.value)
    assert message.startswith("Ray assigned GPU 1, 2 to this worker")
    assert "(CUDA_VISIBLE_DEVICES='1,2')" in message
    assert "torch.cuda.is_available() is False" in message
    assert "--gpus-per-worker 0" in message and "\n" not in message


def test_pick_device_on_fake_gpus_is_the_cpu_when_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(placement.FAKE_GPUS_ENV, "1")  # tests: Ray's pretend GPUs
    assert pick_device(["0"]) == "cpu"


def test_worker_given_a_gpu_without_cuda_fails_before_loading_the_model(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(placement.FAKE_GPUS_ENV, raising=False)
    monkeypatch.setattr(worker, "ray_gpu_ids", lambda: [0])
    # a missing model would raise FileNotFoundError: the GPU check comes first
    with pytest.raises(RuntimeError, match=r"Ray assigned GPU 0 .* is False"):
        ShardWorker(WorkerConfig(str(tmp_path / "no-model")))


class _FakeActorDied(Exception):
    """What Ray raises for an actor whose ``__init__`` failed (its private flag included)."""

    _actor_init_failed = True


def test_actor_error_names_the_init_exception():
    ray_message = (
        "The actor died because of an error raised in its creation task, "
        "ray::ShardWorker.__init__() (pid=1, ip=127.0.0.1)\n"
        '  File "pipeline/worker.py", line 1, in pick_device\n'
        "RuntimeError: Ray assigned GPU 0 to this worker\n"
    )
    assert dispatch.actor_error(_FakeActorDied(ray_message)) == (
        "RuntimeError: Ray assigned GPU 0 to this worker"
    )
    died = Exception("The actor died unexpectedly before finishing this task.\n\tpid: 7")
    assert dispatch.actor_error(died) == "The actor died unexpectedly before finishing this task."


@pytest.mark.cuda
def test_worker_given_a_gpu_codes_on_it(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setattr(worker, "ray_gpu_ids", lambda: [0])  # what Ray would hand over
    shard_worker = ShardWorker(WorkerConfig(tiny_model_dir, batch_size=2))
    assert shard_worker.describe()["device"] == "cuda:0"
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes([(f"k{i}.png", image_bytes(64, 96, seed=i)) for i in range(3)]))
    out = tmp_path / "out"
    rate = shard_worker.codec.ladder[2]
    task = EncodeTask(str(shard), "s", str(out / "s.parquet"), str(out / "s.stats.json"), rate)
    result = shard_worker.encode_shard(task)
    assert (result.samples, result.ok, result.errors) == (3, 3, 0)
