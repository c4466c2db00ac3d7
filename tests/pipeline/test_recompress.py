"""``oscar recompress`` (pipeline/recompress.py) and models read from S3 (storage.local_model_dir).

The quality worker is tested in-process on local files (no Ray); one CLI run goes through
the real local S3 and the session's Ray, with the model itself read from S3 (the driver and
the actor each download it once to their node's cache).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from jobs.cli.main import main as cli_main
from oscar_core import get_config
from pipeline import storage
from pipeline.contract import EncodeTask, QualityTask, WorkerConfig
from pipeline.recompress import QualityWorker, pick_evenly
from pipeline.recompress_report import human_bytes
from pipeline.storage_base import StorageError
from pipeline.worker import ShardWorker
from tests.pipeline.shards import image_bytes, tar_bytes


def test_pick_evenly():
    assert pick_evenly(10, 4) == [1, 3, 6, 8]
    assert pick_evenly(3, 4) == [0, 1, 2]
    assert pick_evenly(5, 0) == [] and pick_evenly(0, 3) == []
    assert pick_evenly(100, 1) == [50]
    assert human_bytes(999) == "999 B" and human_bytes(1_234_567) == "1.23 MB"


def _shard_entries(seed: int = 0) -> list[tuple[str, bytes]]:
    entries = []
    for i in range(4):
        entries += [(f"k{i}.png", image_bytes(48, 64, seed=seed + i)), (f"k{i}.txt", b"cap")]
    entries.insert(2, ("bad.png", b"not an image"))  # an error row, never sampled
    return entries


def test_quality_worker_samples_and_detects_changed_sources(tmp_path, tiny_model_dir):
    shard, parquet = tmp_path / "shard.tar", tmp_path / "shard.parquet"
    shard.write_bytes(tar_bytes(_shard_entries()))
    config = WorkerConfig(tiny_model_dir, batch_size=4)
    rate = get_config("oscar-tiny").rate_ladder()[3]
    task = EncodeTask(str(shard), "shard", str(parquet), str(tmp_path / "s.json"), rate=rate)
    result = ShardWorker(config).encode_shard(task)
    assert (result.ok, result.errors) == (4, 1)

    worker = QualityWorker(config)
    q = worker.quality_shard(QualityTask(str(shard), "shard", str(parquet), sample=2))
    assert [s["key"] for s in q.samples] == ["k1", "k3"] and q.failures == []  # spread evenly
    for s in q.samples:
        assert (s["width"], s["height"]) == (64, 48)
        assert 3 < s["psnr"] < 100 and math.isfinite(s["psnr"])
        assert s["ms_ssim"] is not None and -1 <= s["ms_ssim"] <= 1
        assert s["bpp"] > 0

    everything = worker.quality_shard(QualityTask(str(shard), "shard", str(parquet), sample=99))
    assert [s["key"] for s in everything.samples] == ["k0", "k1", "k2", "k3"]

    # The source changed after encoding: reported, never compared with the wrong image.
    shard.write_bytes(tar_bytes(_shard_entries(seed=50)))
    changed = worker.quality_shard(QualityTask(str(shard), "shard", str(parquet), sample=2))
    assert changed.samples == []
    assert [k for k, _ in changed.failures] == ["k1", "k3"]
    assert all("SHA-256" in why for _, why in changed.failures)


def test_local_model_dir_downloads_once_and_follows_changes(s3_bucket, tiny_model_dir, tmp_path):
    url = f"s3://{s3_bucket}/models/tiny"
    for f in Path(tiny_model_dir).iterdir():
        storage.put_bytes(f"{url}/{f.name}", f.read_bytes())
    cache = str(tmp_path / "cache")
    local = storage.local_model_dir(url, cache)
    assert sorted(os.listdir(local)) == [".complete", "config.json", "model.safetensors"]
    assert (
        Path(local, "config.json").read_bytes() == Path(tiny_model_dir, "config.json").read_bytes()
    )
    assert storage.local_model_dir(url, cache) == local  # cached: no second download
    # a re-uploaded file gives a new directory; the old one stays for running workers
    config = json.loads(Path(tiny_model_dir, "config.json").read_text())
    storage.put_bytes(f"{url}/config.json", json.dumps({**config, "note": "v2"}).encode())
    newer = storage.local_model_dir(url, cache)
    assert newer != local and "v2" in Path(newer, "config.json").read_text()
    assert storage.local_model_dir(tiny_model_dir, cache) == tiny_model_dir  # local: as is
    with pytest.raises(StorageError, match="no model here"):
        storage.local_model_dir(f"s3://{s3_bucket}/models/none", cache)
    assert not [n for n in os.listdir(cache) if ".tmp-" in n]  # no temp dirs left


def test_recompress_cli_with_model_on_s3(s3_bucket, ray_cluster, tiny_model_dir, capsys):
    base = f"s3://{s3_bucket}"
    model = f"{base}/models/oscar-recompress-test"
    for f in Path(tiny_model_dir).iterdir():
        storage.put_bytes(f"{model}/{f.name}", f.read_bytes())
    for s in range(2):
        storage.put_bytes(f"{base}/in/shard-{s:06d}.tar", tar_bytes(_shard_entries(seed=10 * s)))
    storage.put_bytes(f"{base}/rates.txt", b"shard-000000.tar = 1\nshard-000001.tar = 6\n")
    cache_root = Path(storage.model_cache_root())
    before = set(cache_root.glob("oscar-recompress-test-*"))
    try:
        argv = ["recompress", f"{base}/in/*.tar", "--out", f"{base}/out", "--model", model]
        argv += ["--rates-file", f"{base}/rates.txt", "--quality-sample", "2", "--workers", "1"]
        argv += ["--gpus-per-worker", "0", "--cpus-per-worker", "1", "--no-progress"]
        assert cli_main(argv) == 0
    finally:  # the driver and the actor cached the model under the default root
        for d in set(cache_root.glob("oscar-recompress-test-*")) - before:
            shutil.rmtree(d, ignore_errors=True)
    printed = capsys.readouterr().out
    assert "shard-000000" in printed and "total" in printed and "MS-SSIM" in printed

    report = json.loads(storage.read_bytes(f"{base}/out/recompress_report.json"))
    t = report["totals"]
    assert (t["shards"], t["images"], t["errors"], t["quality_n"]) == (2, 10, 2, 4)
    assert t["tar_bytes"] == sum(storage.size(f"{base}/in/shard-{s:06d}.tar") for s in range(2))
    assert t["parquet_bytes"] == sum(
        storage.size(f"{base}/out/shard-{s:06d}.parquet") for s in range(2)
    )
    assert t["saved_bytes"] == t["tar_bytes"] - t["parquet_bytes"]
    assert t["image_bytes"] > t["bitstream_bytes"] > 0 and t["psnr"] > 3 and t["ms_ssim"]
    assert [(r["shard"], r["rate"], r["quality_n"]) for r in report["per_shard"]] == [
        ("shard-000000", 1, 2),
        ("shard-000001", 6, 2),
    ]
    assert report["quality_failures"] == [] and report["ms_ssim_available"]
    md = storage.read_bytes(f"{base}/out/recompress_report.md").decode()
    assert "| shard-000001 | 6 | 5 | 1 |" in md
    # the job config records the model's URL, not a local path
    config = json.loads(storage.read_bytes(f"{base}/out/job_config.json"))
    assert config["model_dir"] == model
