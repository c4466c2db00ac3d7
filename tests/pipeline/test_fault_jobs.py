"""Faults inside a job and unusable outputs, on the session's real S3 server and Ray.

* A ``ShardWorker`` actor process is SIGKILLed (``os.kill``, as the kernel's OOM killer
  would, not ``ray.kill``) while it encodes a shard: the shard is retried on a new actor
  and the output holds every key exactly once.
* An output that cannot be written (a read-only directory, a file in the way, a missing
  bucket, bad credentials, an unreachable endpoint) stops ``oscar encode-shards`` with exit
  2 and one line ``oscar: error: ...`` before any shard work (no job config written).
* A real image over ``--max-pixels`` becomes an error row with the reason; the shard and
  the job go on. On decode, a tiny stream whose header declares a huge image (found by
  ``make fuzz``: 36 bytes made ``Codec.parse`` allocate ~430 MB) is a failed row too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import psutil
import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core import bitstream
from pipeline import parquet, storage, storage_s3
from pipeline.contract import DecodeTask, EncodeJob, Resources, WorkerConfig
from pipeline.report import EncodeReport
from pipeline.runner import run_encode
from pipeline.samples import decode_image
from pipeline.worker import ShardWorker
from tests.pipeline.shards import image_bytes, tar_bytes

CPU = ["--workers", "1", "--gpus-per-worker", "0", "--cpus-per-worker", "1", "--no-progress"]


def _encoding_actors() -> list[psutil.Process]:
    """Ray worker processes of this test session that are inside ``encode_shard`` now.

    Ray titles a worker process ``ray::ShardWorker.encode_shard`` while it runs that method;
    only descendants of this process (our Ray) are considered.
    """
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ShardWorker.encode_shard" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def _download(urls: list[str], to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for url in urls:
        (to / url.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(url))
    return to


def test_sigkilled_actor_mid_shard_is_replaced(s3_bucket, ray_cluster, tiny_model_dir, tmp_path):
    n_shards, per_shard = 3, 40
    for s in range(n_shards):
        entries = [(f"s{s}-{i:03d}.png", image_bytes(64, 96, seed=i)) for i in range(per_shard)]
        storage.put_bytes(f"s3://{s3_bucket}/in/shard-{s:06d}.tar", tar_bytes(entries))
    job = EncodeJob(
        f"s3://{s3_bucket}/in/*.tar",
        f"s3://{s3_bucket}/out",
        tiny_model_dir,
        rate="1",
        batch_size=4,
        max_retries=2,
        backoff_s=0.1,
        resources=Resources(workers=1, gpus_per_worker=0, cpus_per_worker=1),
        progress=False,
    )
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = run_encode(job)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    deadline = time.monotonic() + 180
    while not (victims := _encoding_actors()):
        assert driver.is_alive(), outcome
        assert time.monotonic() < deadline, "no actor started encoding in 180 s"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the shard: 40 images take seconds
    (victim,) = victims
    os.kill(victim.pid, signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive(), "the job did not finish after the kill"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    report: EncodeReport = outcome["report"]  # type: ignore[assignment]

    assert report.shards.processed == n_shards and report.failed == []
    assert sorted(s.attempt for s in report.per_shard) == [1] * (n_shards - 1) + [2]
    original, replacement = report.workers
    assert original["pid"] == victim.pid
    assert "worker died" in replacement["replaced_after"]
    assert replacement["pid"] != victim.pid
    # Every key exactly once, counted by duckdb over the published Parquets.
    parquets = [u for u in storage.list_prefix(job.out + "/") if u.endswith(".parquet")]
    local = _download(parquets, tmp_path / "out")
    rows = duckdb.sql(
        f"SELECT shard, count(*), count(DISTINCT key), count(*) FILTER (status = 'ok') "
        f"FROM read_parquet('{local}/*.parquet') GROUP BY shard"
    ).fetchall()
    assert sorted(r[1:] for r in rows) == [(per_shard, per_shard, per_shard)] * n_shards
    assert not [u for u in storage.list_prefix(job.out + "/") if ".tmp-" in u]


# ------------------------------------------------------------ unusable outputs (CLI)


@pytest.fixture
def local_shard(tmp_path: Path) -> str:
    path = tmp_path / "in" / "shard-000000.tar"
    path.parent.mkdir()
    path.write_bytes(tar_bytes([(f"k{i}.png", image_bytes(32, 32, seed=i)) for i in range(2)]))
    return str(path)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write to: mode 0555, or (root ignores modes) a read-only
    tmpfs mounted there."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _encode_cli(src: str, out: str, model: str, capsys, *extra: str) -> str:  # noqa: ANN001
    """Run ``oscar encode-shards``; it must exit 2 with one error line, which is returned."""
    argv = ["encode-shards", src, "--out", out, "--rate", "1", "--model", model, *CPU, *extra]
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith("oscar: error: encode-shards: "), err[0]
    return err[0]


def test_read_only_output_dir(local_shard, read_only_dir, tiny_model_dir, capsys):
    out = read_only_dir / "out"
    line = _encode_cli(local_shard, str(out), tiny_model_dir, capsys)
    assert str(out) in line and "write check failed" in line
    assert "Read-only file system" in line or "Permission denied" in line
    assert not out.exists()


@pytest.mark.parametrize("where", ["out", "parent"])
def test_file_in_the_way(local_shard, tmp_path, tiny_model_dir, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a directory")
    out = blocker if where == "out" else blocker / "out"
    line = _encode_cli(local_shard, str(out), tiny_model_dir, capsys)
    assert str(out) in line and "write check failed" in line
    assert ("File exists" if where == "out" else "Not a directory") in line
    assert blocker.read_bytes() == b"not a directory"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "the bucket does not exist"),  # the bucket name is replaced below
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret-0001"}, "the secret key does not match"),
        ({"AWS_ACCESS_KEY_ID": "wrong-key-0001"}, "the server does not know this access key"),
        (
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "OSCAR_S3_MAX_ATTEMPTS": "1"},
            "Could not connect to the endpoint URL",
        ),
    ],
    ids=["missing-bucket", "bad-secret", "bad-access-key", "unreachable"],
)
def test_unusable_s3_output(
    local_shard, s3_bucket, tiny_model_dir, capsys, monkeypatch, env, message
):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    bucket = s3_bucket if env else "no-such-bucket-oscar-faults"
    out = f"s3://{bucket}/out"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage_s3.reset_s3_client()
    try:
        line = _encode_cli(local_shard, out, tiny_model_dir, capsys)
    finally:
        monkeypatch.undo()
        storage_s3.reset_s3_client()
    assert line.startswith(f"oscar: error: encode-shards: {out}: write check failed: ")
    assert message in line and secret not in line
    if env:  # nothing was written: the job stopped at validation, before the job config
        assert storage.list_prefix(f"{out}/") == []


# ---------------------------------------------------------------- large real images


def _gradient(height: int, width: int) -> bytes:
    """A real (fully decodable) PNG: colour gradients, cheap to make at 9 megapixels."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1)
    img = Image.fromarray(rgb.astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_pixel_limit_end_to_end(s3_bucket, ray_cluster, tiny_model_dir, tmp_path, capsys):
    big = _gradient(3000, 3000)
    # Under the default limit (64 MP) the image decodes fully; the limit is the only gate.
    assert decode_image(big).array.shape == (3000, 3000, 3)
    entries = [("a.png", image_bytes(64, 96)), ("big.png", big), ("b.png", image_bytes(64, 96))]
    src = f"s3://{s3_bucket}/in/shard-000000.tar"
    storage.put_bytes(src, tar_bytes(entries))
    out = f"s3://{s3_bucket}/out"
    argv = ["encode-shards", src, "--out", out, "--rate", "1", "--model", tiny_model_dir, *CPU]
    assert cli_main([*argv, "--max-pixels", "1000000"]) == 0, capsys.readouterr().err
    assert "images 3 (1 errors)" in capsys.readouterr().out

    local = _download([f"{out}/shard-000000.parquet"], tmp_path)
    rows = duckdb.sql(
        f"SELECT key, status, error_message, width FROM read_parquet('{local}/*.parquet') "
        "ORDER BY index_in_shard"
    ).fetchall()
    assert [(k, s) for k, s, _, _ in rows] == [("a", "ok"), ("big", "error"), ("b", "ok")]
    assert rows[1][2] == (
        "png: too many pixels: 3000x3000 = 9000000 exceeds max_pixels = 1000000 "
        "(decompression-bomb guard; raise it with --max-pixels)"
    )
    config = json.loads(storage.read_bytes(f"{out}/job_config.json"))
    assert config["settings"]["max_pixels"] == 1_000_000
    # A limit that is not a positive number is a bad argument, refused before any work.
    assert cli_main([*argv, "--max-pixels", "0", "--overwrite"]) == 2
    assert 'Invalid max_pixels "0"' in capsys.readouterr().err


def test_decode_refuses_a_stream_declaring_a_huge_image(tiny_model_dir, tmp_path):
    worker = ShardWorker(WorkerConfig(tiny_model_dir, batch_size=2))
    good = image_bytes(64, 96)
    (stream,) = worker.codec.compress([np.asarray(Image.open(io.BytesIO(good)))], 5)
    header = bitstream.Header(
        model_id=worker.codec.model_id, rate_index=5, height=54735, width=16597, rms=(1.0,) * 4
    )
    bomb = bitstream.pack(header, bytes(36))  # a valid CRC: only the pixel count is wrong
    src = str(tmp_path / "hostile.parquet")
    with parquet.ShardParquetWriter(src) as w:
        for i, (key, data) in enumerate([("bomb", bomb), ("good", stream)]):
            row = {"key": key, "shard": "s", "index_in_shard": i, "status": "ok"}
            w.write({**row, "bitstream": data, "metadata": "{}"})
    t0 = time.perf_counter()
    result = worker.decode_shard(DecodeTask(src, "hostile", str(tmp_path / "out.tar")))
    assert time.perf_counter() - t0 < 10
    assert result.decoded == 1
    ((key, why),) = result.failures
    assert key == "bomb"
    assert why.startswith("BitstreamError: too many pixels: 16597x54735 = 908436795 exceeds")
