"""``ShardWorker`` called directly (no Ray), Parquet rows, safe keys and the sinks."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from oscar_core import get_config
from pipeline import parquet
from pipeline.contract import DecodeTask, EncodeTask, WorkerConfig
from pipeline.prefetch import Prefetch
from pipeline.report import read_stats
from pipeline.sinks import FileSink, UnsafeKey, safe_key
from pipeline.storage_base import StorageError
from pipeline.worker import ShardWorker
from tests.pipeline.shards import image_bytes, tar_bytes


@pytest.fixture(scope="module")
def worker(tiny_model_dir: str) -> ShardWorker:
    # chunk_batches=1: several chunks even in a small shard, so chunking is exercised
    return ShardWorker(WorkerConfig(tiny_model_dir, batch_size=2, threads=1, chunk_batches=1))


def encode_task(tmp_path: Path, shard: str, rate: int = 2) -> EncodeTask:
    out = tmp_path / "out"
    ladder = get_config("oscar-tiny").rate_ladder()
    return EncodeTask(shard, "s", str(out / "s.parquet"), str(out / "s.stats.json"), ladder[rate])


def test_encode_shard_writes_one_row_per_sample_in_order(worker, tmp_path):
    entries = [(f"k{i}.png", image_bytes(64 + 32 * (i % 2), 96, seed=i)) for i in range(5)]
    entries += [("k5.jpg", b"not an image"), ("k6.png", image_bytes(64, 96)), ("k6.txt", b"hi")]
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes(entries))
    task = encode_task(tmp_path, str(shard))
    result = worker.encode_shard(task)

    rows = parquet.read_table(task.parquet_url).to_pylist()
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(7)]
    assert [r["index_in_shard"] for r in rows] == list(range(7))
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["error", "ok"]
    bad, ok = rows[5], rows[6]
    assert "not a decodable image" in bad["error_message"] and bad["bitstream"] is None
    assert ok["rate_index"] == 2 and ok["pseudo_timestep"] == worker.codec.ladder[2].t
    assert (ok["width"], ok["height"]) == (96, 64)
    assert ok["measured_bpp"] == pytest.approx(8 * len(ok["bitstream"]) / (96 * 64))
    assert json.loads(ok["metadata"]) == {"txt": "hi"}
    assert ok["model_id"] == worker.model_id and ok["encode_ms"] > 0
    # the bitstreams decode to the recorded size
    (img,) = worker.codec.decompress([ok["bitstream"]])
    assert img.shape == (64, 96, 3)
    # the stats JSON is the done marker and matches the rows
    stats = read_stats(task.stats_url)
    assert (
        (stats.samples, stats.ok, stats.errors)
        == (7, 6, 1)
        == (
            result.samples,
            result.ok,
            result.errors,
        )
    )
    assert stats.bitstream_bytes == sum(r["bitstream_bytes"] or 0 for r in rows)


def test_missing_shard_fails_the_shard_without_outputs(worker, tmp_path):
    task = encode_task(tmp_path, str(tmp_path / "missing.tar"))
    with pytest.raises(StorageError, match="missing.tar"):
        worker.encode_shard(task)
    assert not os.path.exists(task.stats_url) and not os.path.exists(task.parquet_url)


def test_parquet_row_groups_and_schema_check(tmp_path):
    path = str(tmp_path / "x.parquet")
    with parquet.ShardParquetWriter(path, row_group_rows=3) as w:
        for i in range(7):
            w.write({"key": f"k{i}", "shard": "s", "index_in_shard": i, "status": "ok"})
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (7, 3)
    with pytest.raises(KeyError, match="unknown Parquet columns"):
        parquet.ShardParquetWriter(str(tmp_path / "y.parquet")).write({"nope": 1})
    pq.write_table(pq.read_table(path).drop(["bitstream"]), str(tmp_path / "z.parquet"))
    with pytest.raises(ValueError, match="missing column 'bitstream'"):
        next(parquet.iter_row_batches(str(tmp_path / "z.parquet")))


@pytest.mark.parametrize(
    "key", ["ok", "dir/sub/000123", "unicode-\u00e9\u4e2d", "with space", "a-b_c"]
)
def test_safe_keys_pass(key):
    assert safe_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../../etc/x",
        "a/../../b",
        "/etc/passwd",
        "a\x00b",
        "a\nb",
        "a\\..\\b",
        "C:/windows",
        "a//b",
        "./a",
        "a/.",
        "x.y",
        "a" * 300,
        None,
        7,
    ],
)
def test_unsafe_keys_rejected(key):
    with pytest.raises(UnsafeKey):
        safe_key(key)


def test_file_sink_refuses_symlink_escape(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "link").symlink_to(outside)
    sink = FileSink(str(root))
    with pytest.raises(UnsafeKey, match="outside the output directory"):
        sink.add("link/x", {"png": b"data"})
    assert list(outside.iterdir()) == []


def test_decode_to_files_sanitises_keys(worker, tmp_path):
    """Hostile keys in a Parquet never write outside the output directory."""
    image = np.asarray(Image.open(io.BytesIO(image_bytes(64, 96))).convert("RGB"))
    (stream,) = worker.codec.compress([image], 1)
    keys = ["good/a", "../../escape", "/abs/path", "nul\x00key", "C:/drive", "dup", "dup", "x.y"]
    keys += ["evil-field"]
    src = str(tmp_path / "hostile.parquet")
    with parquet.ShardParquetWriter(src) as w:
        for i, key in enumerate(keys):
            meta = {"txt": f"caption {i}"}
            if key == "evil-field":
                meta["../../x"] = "a field name is a path component too"
            w.write(
                {
                    "key": key,
                    "shard": "s",
                    "index_in_shard": i,
                    "status": "ok",
                    "bitstream": stream,
                    "metadata": json.dumps(meta),
                }
            )
    out = tmp_path / "deep" / "out"
    task = DecodeTask(src, "hostile", str(out / "hostile"), format="png", as_files=True)
    result = worker.decode_shard(task)

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "hostile/dup.png",
        "hostile/dup.txt",
        "hostile/good/a.png",
        "hostile/good/a.txt",
    ]
    assert result.decoded == 2 and len(result.failures) == len(keys) - 2
    reasons = " | ".join(why for _, why in result.failures)
    words = ("'..'", "absolute", "control character", "drive", "duplicate key", "separator")
    for word in words:
        assert word in reasons
    # nothing appeared anywhere else under tmp_path
    others = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert sorted(p.name for p in others) == ["hostile.parquet"]
    assert Image.open(out / "hostile/good/a.png").size == (96, 64)


def test_decode_to_tar_restores_fields(worker, tmp_path):
    shard = tmp_path / "s.tar"
    entries = [("a.png", image_bytes(64, 96)), ("a.json", b'{"x": 1}'), ("a.bin", b"\xff\x00")]
    entries += [("b.jpg", image_bytes(80, 64, fmt="JPEG"))]
    shard.write_bytes(tar_bytes(entries))
    task = encode_task(tmp_path, str(shard))
    worker.encode_shard(task)
    out = tmp_path / "dec.tar"
    result = worker.decode_shard(DecodeTask(task.parquet_url, "s", str(out), format="webp"))
    assert result.decoded == 2 and not result.failures
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert names == ["a.webp", "a.bin", "a.json", "b.webp"]  # grouped by key
        assert tf.extractfile("a.json").read() == b'{"x": 1}'
        assert tf.extractfile("a.bin").read() == b"\xff\x00"
        assert Image.open(tf.extractfile("b.webp")).size == (64, 80)


def test_prefetch_propagates_errors_and_stops_early():
    def failing():
        yield 1
        raise RuntimeError("producer broke")

    with pytest.raises(RuntimeError, match="producer broke"), Prefetch(failing, 1) as pre:
        list(pre)

    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    with Prefetch(endless, 2) as pre:
        for item in pre:
            if item == 3:
                break
    time.sleep(0.3)
    n = len(produced)
    assert n <= 10  # bounded queue: the producer ran at most a few items ahead, then stopped
    time.sleep(0.2)
    assert len(produced) == n
    assert not any(t.name == "shard-prefetch" and t.is_alive() for t in threading.enumerate())
