"""Reading the archive back: rows of ``encode-shards`` Parquet -> decoded images.

Shared by the two decode-on-read front ends (``pipeline.dataset`` for PyTorch,
``pipeline.ray_data`` for Ray Data); ``decode-shards`` has its own loop in the worker,
which also restores carried fields and writes shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from oscar_core.codec import Codec
from oscar_core.errors import BitstreamError

from . import storage
from .placement import pick_device, ray_gpu_ids


@dataclass
class RowOutcome:
    """One archive row after decoding: ``kind`` "ok" (``image`` set), "error_row" (status
    "error" in the archive: nothing to decode) or "bad_stream" (the codec refused it)."""

    row: dict[str, Any]
    kind: str
    error: str | None = None
    image: np.ndarray | None = None  # (H,W,3) uint8


def load_codec(model: str | None, device: str | None = None, codec_batch: int = 4) -> Codec:
    """The codec of ``model`` (local or ``s3://`` directory; None: the shipped model) on
    ``device`` (default: the GPU Ray gave this process, else the CPU)."""
    return Codec.from_pretrained(
        storage.local_model_dir(model),
        device=device or pick_device(ray_gpu_ids()),
        batch_size=codec_batch,
    )


def decode_rows(codec: Codec, rows: list[dict[str, Any]]) -> list[RowOutcome]:
    """One outcome per row, in row order; the good streams are decoded together (same-size
    streams share model calls)."""
    outcomes: list[RowOutcome] = []
    parsed, positions = [], []
    for row in rows:
        if row["status"] != "ok":
            reason = row.get("error_message") or "error row in the archive"
            outcomes.append(RowOutcome(row, "error_row", reason))
            continue
        try:
            parsed.append(codec.parse(row["bitstream"] or b""))
        except BitstreamError as exc:
            outcomes.append(RowOutcome(row, "bad_stream", f"BitstreamError: {exc}"))
            continue
        positions.append(len(outcomes))
        outcomes.append(RowOutcome(row, "ok"))
    images = codec.decode_parsed(parsed) if parsed else []
    for pos, image in zip(positions, images, strict=True):
        outcomes[pos].image = image
    return outcomes
