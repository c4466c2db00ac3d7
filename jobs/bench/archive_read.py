"""Benchmark section 11: decode-on-read. Images/s and bytes read when a training or
inference job reads the OSCAR archive through ``pipeline.dataset.ArchiveDataset`` (decode
included) against reading the same images stored as PNG files through a plain
ImageFolder-style dataset, both from the same (local) storage through a DataLoader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jobs.bench import shards
from jobs.bench.common import BenchContext, SectionResult, table


class PngFolder:
    """The plain way: one PNG file per image, opened and decoded by Pillow (a map-style
    dataset like torchvision's ImageFolder without the class folders)."""

    def __init__(self, root: Path) -> None:
        self.paths = sorted(root.glob("*.png"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def _drain(dataset, batch_size: int | None) -> tuple[int, float]:
    """(images, seconds) to iterate ``dataset`` once through a DataLoader in this process."""
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    n = 0
    for item in DataLoader(dataset, batch_size=batch_size, collate_fn=lambda x: x):
        n += len(item)
    return n, time.perf_counter() - t0


def section_archive_read(ctx: BenchContext) -> SectionResult:
    """11. Images/s and bytes read: the archive through ArchiveDataset vs PNG files."""
    from pipeline.contract import EncodeTask, WorkerConfig
    from pipeline.dataset import ArchiveDataset
    from pipeline.worker import ShardWorker

    rate = shards.pipeline_rate(ctx)
    count = len(ctx.images) * 2
    root = ctx.work_dir / "archive_read"
    shard = root / "shard-000000.tar"
    shards.write_shard(shard, ctx.images, count)
    worker = ShardWorker(WorkerConfig(str(ctx.model_dir), threads=ctx.threads))
    parquet = root / "arch" / "shard-000000.parquet"
    worker.encode_shard(
        EncodeTask(
            shard=str(shard),
            name="shard-000000",
            parquet_url=str(parquet),
            stats_url=str(root / "arch" / "shard-000000.stats.json"),
            rate=worker.codec.ladder[rate],
        )
    )
    pngs = root / "png"
    pngs.mkdir()
    for k in range(count):
        (pngs / f"{k:06d}.png").write_bytes(shards.png_bytes(ctx.images[k % len(ctx.images)]))
    png_bytes = sum(p.stat().st_size for p in pngs.glob("*.png"))
    archive = ArchiveDataset(str(parquet), str(ctx.model_dir), codec_batch=4)
    _drain(archive, None)  # warm-up: loads the codec once, as a long job would
    runs = {"archive": [], "png": []}
    for _ in range(ctx.repeats):
        runs["archive"].append(_drain(archive, None))
        runs["png"].append(_drain(PngFolder(pngs), 1))
    med = {k: float(np.median([s for _, s in v])) for k, v in runs.items()}
    ips = {k: count / med[k] for k in med}
    stored = {"archive": parquet.stat().st_size, "png": png_bytes}
    rows = [
        [
            "ArchiveDataset (OSCAR Parquet, decode included)",
            count,
            ips["archive"],
            stored["archive"],
        ],
        ["PNG files (Pillow, ImageFolder-style)", count, ips["png"], stored["png"]],
    ]
    return SectionResult(
        title="Decode-on-read",
        status="info",
        measured=(
            f"archive {ips['archive']:.2f} images/s vs PNG {ips['png']:.1f} images/s "
            f"({ips['png'] / ips['archive']:.0f}x faster); bytes read "
            f"{stored['archive']} vs {stored['png']} ({stored['png'] / stored['archive']:.0f}x fewer)"
        ),
        method=(
            f"{count} images ({len(ctx.images)} cycled) coded at rate {rate} into one Parquet by "
            "ShardWorker.encode_shard; both read from local disk through a DataLoader in this "
            "process (num_workers 0), median of the repeats after one warm-up pass that loads "
            "the codec; bytes read = the files each reader reads whole (the Parquet's bitstream "
            "and metadata columns are nearly all of it)"
        ),
        figures={
            "archive_images_per_s": ips["archive"],
            "png_images_per_s": ips["png"],
            "archive_bytes": float(stored["archive"]),
            "png_bytes": float(stored["png"]),
        },
        tables=[
            table("Reading the same images", ["reader", "images", "images/s", "bytes read"], rows)
        ],
        details={"rate": rate, "runs_s": {k: [s for _, s in v] for k, v in runs.items()}},
    )
