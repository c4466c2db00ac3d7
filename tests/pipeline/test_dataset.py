"""Decode-on-read: ArchiveDataset over local and S3 Parquet, split across DataLoader
workers and ranks without overlap or loss, shuffled by seed; error rows skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from oscar_core.codec import Codec
from pipeline import storage
from pipeline.dataset import ArchiveDataset, Unit, plan_units
from pipeline.parquet import ShardParquetWriter

# 3 files x 5 rows, row groups of 2 rows: 3 groups per file
FILES, ROWS, GROUP = 3, 5, 2


@pytest.fixture(scope="module")
def codec(tiny_model_dir: str) -> Codec:
    return Codec.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def archive(codec: Codec, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Local Parquet files written by the shard writer: ok rows of two sizes, one error row
    (status "error") and one row whose bitstream is corrupt. Returns paths + truth."""
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    truth: dict[str, np.ndarray] = {}  # key -> decoded image
    errors = set()
    for f in range(FILES):
        rows = []
        for i in range(ROWS):
            key = f"f{f}-{i:02d}"
            row = {"key": key, "shard": f"shard-{f}", "index_in_shard": i, "metadata": "{}"}
            if (f, i) == (1, 3):
                rows.append({**row, "status": "error", "error_message": "unreadable image"})
                errors.add(key)
                continue
            size = (32, 48) if i % 2 else (40, 32)
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            (stream,) = codec.compress([image], 3)
            if (f, i) == (2, 1):
                stream = stream[:-3] + b"xyz"  # CRC fails: a bad bitstream row
                errors.add(key)
            else:
                truth[key] = codec.decompress([stream])[0]
            h, w = size
            meta = json.dumps({"txt": f"caption {key}"})
            rows.append(
                {
                    **row,
                    "status": "ok",
                    "bitstream": stream,
                    "width": w,
                    "height": h,
                    "rate_index": 3,
                    "bitstream_bytes": len(stream),
                    "metadata": meta,
                }
            )
        with ShardParquetWriter(str(root / f"part-{f}.parquet"), row_group_rows=GROUP) as w:
            for row in rows:
                w.write(row)
    return {"root": root, "truth": truth, "errors": errors}


def collect(ds, **loader) -> dict[str, tuple[torch.Tensor, dict]]:
    out: dict[str, tuple[torch.Tensor, dict]] = {}
    for key, image, meta in DataLoader(ds, batch_size=None, **loader):
        assert key not in out, f"{key} yielded twice"
        out[key] = (image, meta)
    return out


def assert_exact(got: dict, truth: dict) -> None:
    assert set(got) == set(truth)
    for key, (image, meta) in got.items():
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        # batched vs single decode: float summation order may move a pixel by one level
        diff = np.abs(image.permute(1, 2, 0).numpy().astype(int) - truth[key])
        assert diff.max() <= 1, key
        assert meta["metadata"] == {"txt": f"caption {key}"} and meta["rate_index"] == 3


def test_every_ok_row_once_and_error_rows_counted(archive, tiny_model_dir):
    ds = ArchiveDataset(str(archive["root"] / "*.parquet"), model=tiny_model_dir)
    assert_exact(collect(ds), archive["truth"])
    s = ds.stats
    assert (s.rows, s.yielded, s.error_rows, s.bad_streams) == (15, 13, 1, 1)
    assert s.failures[0][0] == "f2-01" and "CRC" in s.failures[0][1].upper()


def test_dataloader_workers_split_without_overlap(archive, tiny_model_dir):
    ds = ArchiveDataset(str(archive["root"] / "part-{0..2}.parquet"), model=tiny_model_dir)
    assert_exact(collect(ds, num_workers=2), archive["truth"])


@pytest.mark.parametrize("files", [1, 3])  # 1 file < 2 ranks: split by row group
def test_ranks_split_without_overlap_or_loss(archive, tiny_model_dir, files):
    paths = [str(archive["root"] / f"part-{f}.parquet") for f in range(files)]
    parts = [
        collect(ArchiveDataset(paths, model=tiny_model_dir, rank=r, world_size=2)) for r in range(2)
    ]
    assert not set(parts[0]) & set(parts[1]) and parts[0] and parts[1]
    truth = {k: v for k, v in archive["truth"].items() if int(k[1]) < files}
    assert_exact({**parts[0], **parts[1]}, truth)


def test_shuffle_by_seed_and_epoch(archive):
    files = [str(archive["root"] / f"part-{f}.parquet") for f in range(FILES)]
    plain = plan_units(files, 4, shuffle=False, seed=0)  # 3 files < 4 consumers: row groups
    assert plain == [Unit(f, g) for f in files for g in range(3)]
    a, b = (plan_units(files, 4, shuffle=True, seed=s) for s in (7, 8))
    assert a == plan_units(files, 4, shuffle=True, seed=7)  # the same on every consumer
    assert sorted(a, key=plain.index) == plain and a != plain and a != b


def test_streams_from_s3(archive, s3_bucket, tiny_model_dir):
    for path in sorted(Path(archive["root"]).glob("*.parquet")):
        storage.put_bytes(f"s3://{s3_bucket}/arch/{path.name}", path.read_bytes())
    ds = ArchiveDataset(f"s3://{s3_bucket}/arch/*.parquet", model=tiny_model_dir, shuffle=True)
    assert_exact(collect(ds), archive["truth"])
    with storage.open_seekable(f"s3://{s3_bucket}/arch/part-0.parquet") as f:
        f.seek(-4, 2)
        assert f.read() == b"PAR1"  # ranged read of the tail only


def test_bad_source_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="matched nothing"):
        ArchiveDataset(str(tmp_path / "*.parquet"), model=tiny_model_dir)
