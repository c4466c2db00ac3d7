"""Training data from WebDataset shards: local globs / brace ranges and a real S3 server.

The S3 test uses Ceph radosgw from infra/local_s3 (``s3_env`` / ``s3_bucket`` from the
pipeline tests): the shards are uploaded with ``pipeline.storage`` and read back by
``oscar train`` through the same module, with the endpoint and credentials from the
environment, as a user would run it.
"""

from __future__ import annotations

import json

import pytest

from jobs.train.data import load_images, shard_urls
from jobs.train.trainer import Trainer
from pipeline import storage
from tests.jobs.train.test_train import tiny_run
from tests.pipeline.shards import image_bytes, tar_bytes


def _shards() -> list[bytes]:
    """Two shards: 3 + 4 samples (png / jpg with a json field), one sample corrupt."""
    first = [(f"s{i:03d}.png", image_bytes(140, 300, seed=i)) for i in range(3)]
    second = []
    for i in range(3, 7):
        second += [(f"s{i:03d}.json", b'{"i": %d}' % i),
                   (f"s{i:03d}.jpg", image_bytes(150, 280, seed=i, fmt="JPEG"))]  # fmt: skip
    second[-1] = ("s006.jpg", b"not a jpeg")  # skipped, counted, not fatal
    return [tar_bytes(first), tar_bytes(second)]


def test_local_shard_specs(tmp_path):
    for i, data in enumerate(_shards()):
        (tmp_path / f"shard-{i:03d}.tar").write_bytes(data)
    for spec in (f"{tmp_path}/shard-{{000..001}}.tar", f"{tmp_path}/*.tar"):
        images, names = load_images(spec, max_side=128)
        assert len(images) == 6 and names[0].endswith("shard-000.tar:s000")
        assert max(images[0].shape[:2]) == 128 and images[0].dtype.name == "uint8"
    with pytest.raises(ValueError, match="matched nothing"):
        load_images(f"{tmp_path}/none-*.tar")


def test_train_from_s3_shards(tmp_path, s3_bucket):
    for i, data in enumerate(_shards()):
        storage.put_bytes(f"s3://{s3_bucket}/train/shard-{i:03d}.tar", data)
    storage.put_bytes(f"s3://{s3_bucket}/train/notes.txt", b"not a shard")
    prefix = f"s3://{s3_bucket}/train"
    assert len(shard_urls(prefix)) == 2  # a bare prefix: its .tar objects
    assert len(shard_urls(f"{prefix}/*.tar")) == 2
    images, _ = load_images(f"{prefix}/", max_side=256)
    assert len(images) == 6

    cfg = tiny_run(tmp_path, steps=1)
    cfg.data = f"{prefix}/shard-{{000..001}}.tar"
    assert Trainer(cfg).run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == {"images": 6, "train": 4, "held": 2, "ranks": 1}
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
