"""Issue 13 item 7: decode streams, in and out, on the real S3 server (Ceph; no mocks).

The Parquet is read a row group at a time by ranged GETs, never downloaded whole; a tar
shard written to S3 goes up as a multipart upload while the Parquet is still being read,
with nothing staged on local disk, and matches a local output byte for byte; a decode that
fails, or a writer that is SIGKILLed, leaves nothing at the final key. What the storage
layer asks of S3 is recorded with botocore's own event hooks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.common.paths import REPO
from pipeline import parquet, storage, storage_s3
from pipeline.contract import DecodeTask, EncodeTask, WorkerConfig
from pipeline.worker import DECODE_COLUMNS, ShardWorker
from tests.pipeline.shards import image_bytes, tar_bytes

MiB = 1 << 20
SAMPLES = 10
FIELD_BYTES = 1_500_000  # a binary field per sample: a ~15 MB tar, two 8 MiB parts


@dataclass(frozen=True)
class S3Call:
    op: str  # the S3 operation: GetObject, UploadPart, ...
    key: str
    nbytes: int | None  # the bytes a ranged GET asked for (None: no Range, the whole object)
    staged: tuple[str, ...]  # what the temp directory held when the call was made


@contextlib.contextmanager
def recorded_s3_calls(temp_dir: Path | None = None) -> Iterator[list[S3Call]]:
    """Every S3 call this process makes inside the block, in order."""
    calls: list[S3Call] = []

    def record(model, params, **_):  # noqa: ANN001, ANN003 - botocore's hook signature
        first, _, last = params.get("Range", "").removeprefix("bytes=").partition("-")
        nbytes = int(last) - int(first) + 1 if last else None
        staged = tuple(sorted(os.listdir(temp_dir))) if temp_dir else ()
        calls.append(S3Call(model.name, params.get("Key", ""), nbytes, staged))

    client = storage_s3.s3_client()
    client.meta.events.register("before-parameter-build.s3", record)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-parameter-build.s3", record)


def open_uploads(bucket: str) -> list[str]:
    uploads = storage_s3.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


@pytest.fixture(scope="module")
def worker(tiny_model_dir: str) -> ShardWorker:
    return ShardWorker(WorkerConfig(tiny_model_dir, batch_size=2, threads=1))


@pytest.fixture(scope="module")
def shard(worker: ShardWorker, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An encoded shard of SAMPLES 64x64 images, each with a FIELD_BYTES binary field, as a
    Parquet of one row group per row ("good"), and a copy whose last row group's page
    header is overwritten ("damaged": reading it fails after the others were read)."""
    d = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(0)
    fields = {f"k{i}": rng.bytes(FIELD_BYTES) for i in range(SAMPLES)}
    entries = []
    for i, (key, data) in enumerate(fields.items()):
        entries += [(f"{key}.png", image_bytes(64, 64, seed=i)), (f"{key}.bin", data)]
    (d / "s.tar").write_bytes(tar_bytes(entries))
    encoded = str(d / "enc.parquet")
    rate = worker.codec.ladder[2]
    worker.encode_shard(EncodeTask(str(d / "s.tar"), "s", encoded, str(d / "s.stats.json"), rate))
    good = d / "good.parquet"
    with parquet.ShardParquetWriter(str(good), row_group_rows=1) as w:
        for row in parquet.read_table(encoded).to_pylist():
            w.write(row)
    meta = pq.ParquetFile(good).metadata
    assert meta.num_row_groups == SAMPLES
    page = meta.row_group(SAMPLES - 1).column(parquet.COLUMNS.index("metadata")).data_page_offset
    damaged = bytearray(good.read_bytes())
    damaged[page : page + 16] = b"\xff" * 16
    (d / "damaged.parquet").write_bytes(damaged)
    return {"good": good, "damaged": d / "damaged.parquet", "fields": fields}


def test_parquet_is_read_a_row_group_at_a_time(shard, s3_bucket):
    url = f"s3://{s3_bucket}/enc/s.parquet"
    storage.atomic_put_file(url, str(shard["good"]))
    size = shard["good"].stat().st_size
    with recorded_s3_calls() as calls:
        batches = parquet.iter_row_batches(url, columns=list(DECODE_COLUMNS))
        first = next(batches)
        fetched_for_first = sum(c.nbytes or size for c in calls if c.op == "GetObject")
        rest = [row for batch in batches for row in batch]
    gets = [c for c in calls if c.op == "GetObject"]
    assert gets and all(c.nbytes is not None for c in gets)  # never the whole object
    assert [r["key"] for r in first + rest] == list(shard["fields"])  # a batch per row group
    assert fetched_for_first < size / 3  # the footer and the first row group, not the file
    assert sum(c.nbytes for c in gets) <= size + 2 * MiB  # each byte read about once


def test_tar_streams_to_s3_while_the_parquet_is_read(
    shard, s3_bucket, worker, tmp_path, monkeypatch
):
    src = f"s3://{s3_bucket}/enc/s.parquet"
    storage.atomic_put_file(src, str(shard["good"]))
    temp_dir = tmp_path / "temp"  # where anything staged on local disk would go
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    out = f"s3://{s3_bucket}/dec/s.tar"
    with recorded_s3_calls(temp_dir) as calls:
        result = worker.decode_shard(DecodeTask(src, "s", out, format="png"))
    assert result.decoded == SAMPLES and not result.notes

    writes = [c for c in calls if c.key == "dec/s.tar"]
    ops = [c.op for c in writes]
    assert ops == ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"]
    # streamed: the first part went up while row groups were still to be read, and at no
    # call was anything staged in the temp directory
    first_part = calls.index(writes[1])
    assert any(c.op == "GetObject" and c.key == "enc/s.parquet" for c in calls[first_part:])
    assert all(c.staged == () for c in calls)
    gets = [c for c in calls if c.op == "GetObject"]
    assert all(c.nbytes is not None and c.nbytes < shard["good"].stat().st_size / 3 for c in gets)

    local = tmp_path / "dec" / "s.tar"  # a local output is the same stream into a file
    worker.decode_shard(DecodeTask(str(shard["good"]), "s", str(local), format="png"))
    assert storage.read_bytes(out) == local.read_bytes()
    with tarfile.open(local) as tf:
        assert all(tf.extractfile(f"{k}.bin").read() == v for k, v in shard["fields"].items())


def test_failed_decode_leaves_nothing_at_the_key(shard, root, worker):
    src = f"{root}/enc/damaged.parquet"
    storage.atomic_put_file(src, str(shard["damaged"]))
    out = f"{root}/dec/s.tar"
    with recorded_s3_calls() as calls, pytest.raises(OSError, match="page header"):
        worker.decode_shard(DecodeTask(src, "s", out, format="png"))
    assert not storage.exists(out)
    assert storage.list_prefix(f"{root}/dec/") == []  # no object, no temp file
    if root.startswith("s3://"):  # a part had gone up: the upload was aborted
        ops = [c.op for c in calls if c.key == "dec/s.tar"]
        assert ops == ["CreateMultipartUpload", "UploadPart", "AbortMultipartUpload"]
        assert open_uploads(root.removeprefix("s3://")) == []


_KILLED_WRITER = """
import sys, time
from pipeline import storage
out = storage.open_write(sys.argv[1])
out.write(b"x" * (9 << 20))  # more than a part: on S3 a multipart upload has begun
print("written", flush=True)
time.sleep(300)
"""


def test_sigkilled_writer_leaves_nothing_at_the_key(root):
    """What a decode worker SIGKILLed mid-tar leaves (no ``finally`` runs): nothing at the
    key; only the unfinished upload (or local temp file), which the job's sweep after
    dispatch (``storage.remove_stale_temps``) removes."""
    url = f"{root}/dec/s.tar"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _KILLED_WRITER, url]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env) as proc:
        try:
            assert proc.stdout.readline().strip() == "written"
        finally:
            proc.kill()
    assert not storage.exists(url)
    assert len(storage.remove_stale_temps(url)) == 1
    assert storage.list_prefix(f"{root}/dec/") == []
    if root.startswith("s3://"):
        assert open_uploads(root.removeprefix("s3://")) == []


def test_open_write_publishes_whole_or_not_at_all(root):
    url = f"{root}/out/big.bin"
    data = np.random.default_rng(1).bytes(9 * MiB + 123)
    with pytest.raises(RuntimeError, match="producer broke"), storage.open_write(url) as out:
        out.write(data)
        raise RuntimeError("the producer broke")
    assert storage.list_prefix(f"{root}/out/") == []
    with storage.open_write(url) as out:
        for i in range(0, len(data), MiB):
            out.write(data[i : i + MiB])
        assert not storage.exists(url)  # nothing at the key before publish
        out.publish()
        with pytest.raises(ValueError, match="write after publish"):
            out.write(b"late")
    assert storage.read_bytes(url) == data
    if root.startswith("s3://"):
        assert open_uploads(root.removeprefix("s3://")) == []
