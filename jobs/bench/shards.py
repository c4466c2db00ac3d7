"""What the pipeline sections of ``oscar bench`` (4 efficiency, 5 scaling, 6 memory, 8 S3)
share: the pipeline API they need, WebDataset tar shards of the bench images, the rate.

The sections run only when ``pipeline`` offers the API they use (``runner.run_encode`` /
``contract.EncodeJob`` / ``WorkerConfig`` / ``EncodeTask`` / ``Resources``,
``worker.ShardWorker``, ``storage.open_read``, ``storage_s3``); otherwise a section says
``not run: pipeline missing`` with what is absent, never a number. Shards are tars of
``000000.png``, ... written into the run's scratch directory.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from jobs.bench.common import BenchContext


def pipeline_api() -> tuple[dict[str, Any] | None, str | None]:
    """The pipeline objects the sections use, or (None, why they cannot be imported: the
    ``pipeline`` extra's libraries missing)."""
    try:
        from pipeline import contract, runner, storage, storage_s3, worker
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        return None, f"pipeline missing ({type(exc).__name__}: {exc})"
    api = {
        "run_encode": runner.run_encode,
        "EncodeJob": contract.EncodeJob,
        "ShardWorker": worker.ShardWorker,
        "WorkerConfig": contract.WorkerConfig,
        "EncodeTask": contract.EncodeTask,
        "Resources": contract.Resources,
        "open_read": storage.open_read,
        "storage_s3": storage_s3,
    }
    return api, None


def png_bytes(img: np.ndarray) -> bytes:
    """(H,W,3) uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def write_shard(path: Path, images: list[np.ndarray], count: int) -> int:
    """A WebDataset tar of ``count`` PNG samples cycling over ``images``; returns its bytes."""
    pngs = [png_bytes(i) for i in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for k in range(count):
            data = pngs[k % len(pngs)]
            info = tarfile.TarInfo(f"{k:06d}.png")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path.stat().st_size


def pipeline_rate(ctx: BenchContext) -> int:
    """The rate the pipeline sections code at: the highest profiled one."""
    return ctx.sample_rates[-1]
