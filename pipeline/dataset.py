"""Decode-on-read: an OSCAR Parquet archive as a PyTorch ``IterableDataset``.

Training and batch-inference jobs read the archive that ``encode-shards`` wrote without a
``decode-shards`` pass and without storing the pixels again::

    ds = ArchiveDataset("s3://bucket/archive/*.parquet", model="s3://bucket/models/oscar-tiny")
    loader = DataLoader(ds, batch_size=None, num_workers=2)   # items, not collated batches
    for key, image, meta in loader: ...    # image: (3,H,W) uint8 tensor on the CPU

How the work is split (each ok row exactly once per epoch, none twice):
- the unit of work is one Parquet row group (``encode-shards`` writes 4096 rows per group);
- every consumer (DataLoader worker x distributed rank) computes the same unit list, in
  shard order, shuffled with ``seed + epoch`` when ``shuffle``; consumer ``c`` of ``n`` takes
  units ``c, c + n, c + 2n, ...``;
- with at least as many files as consumers the units are whole files, so a consumer reads
  only its own files' footers; with fewer files it reads every footer to split row groups;
- rows are streamed from a row group ``batch_rows`` at a time through ranged reads (S3) or
  the file itself (local): never a whole file in memory.

Rows whose ``status`` is "error" (no bitstream) and rows whose bitstream fails to parse are
skipped and counted in ``ReadStats`` (per consumer; logged when a consumer finishes).
Images are decoded on ``device`` in batches of ``codec_batch`` same-size streams.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from oscar_core.codec import Codec

from . import storage
from .archive import RowOutcome, decode_rows, load_codec
from .parquet import iter_row_batches

# The columns yielded as metadata (besides the decoded image); ``metadata`` is parsed JSON.
META_COLUMNS = (
    "shard",
    "index_in_shard",
    "rate_index",
    "width",
    "height",
    "bitstream_bytes",
    "model_id",
    "metadata",
)
_READ_COLUMNS = ["key", "status", "bitstream", *META_COLUMNS]


@dataclass
class ReadStats:
    """What one consumer read: yielded rows, and rows skipped with the reason."""

    rows: int = 0
    yielded: int = 0
    error_rows: int = 0  # status "error" in the archive: nothing to decode
    bad_streams: int = 0  # a bitstream the codec refused (another model, corrupt)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), first 100

    def count(self, out: RowOutcome) -> bool:
        """Count one outcome; True when it is to be yielded."""
        self.rows += 1
        if out.kind == "ok":
            self.yielded += 1
            return True
        if out.kind == "error_row":
            self.error_rows += 1
        else:
            self.bad_streams += 1
            if len(self.failures) < 100:
                self.failures.append((out.row["key"], out.error or ""))
        return False


@dataclass(frozen=True)
class Unit:
    """One piece of work: a whole file (``row_group`` None) or one of its row groups."""

    url: str
    row_group: int | None = None


def consumer_slot(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(this consumer's index, number of consumers) over distributed ranks x DataLoader
    workers. ``rank``/``world_size`` default to torch.distributed's when it is initialised,
    else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


def plan_units(files: Sequence[str], consumers: int, *, shuffle: bool, seed: int) -> list[Unit]:
    """Every unit of the epoch in one order that all consumers agree on (see module doc)."""
    if len(files) >= consumers:
        units = [Unit(url) for url in files]
    else:
        units = []
        for url in files:
            with storage.open_seekable(url) as f:
                n = pq.ParquetFile(f).metadata.num_row_groups
            units.extend(Unit(url, g) for g in range(n))
    if shuffle:
        random.Random(seed).shuffle(units)
    return units


class ArchiveDataset(IterableDataset):
    """Yields ``(key, image, meta)`` for every ok row of the archive: ``image`` a (3,H,W)
    uint8 tensor on the CPU, ``meta`` a dict of ``META_COLUMNS``.

    ``source``: a Parquet URL, glob or brace list (local or ``s3://``), or a list of them.
    ``model``: the model directory the archive was coded with (local or ``s3://``; default
    the shipped model). Each consumer loads its own codec on first use, on ``device``.
    Call ``set_epoch(e)`` before each epoch for a new shuffle.
    """

    def __init__(
        self,
        source: str | Sequence[str],
        model: str | None = None,
        *,
        device: str = "cpu",
        codec_batch: int = 4,
        batch_rows: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        specs = [source] if isinstance(source, str) else list(source)
        if not specs:
            raise ValueError("ArchiveDataset: no source given")
        if batch_rows < 1 or codec_batch < 1:
            raise ValueError(
                f"ArchiveDataset: batch_rows {batch_rows} and codec_batch "
                f"{codec_batch} must be >= 1"
            )
        # Resolved once, here: every consumer then works on the same sorted file list.
        self.files = sorted({u for spec in specs for u in storage.expand_shards(spec)})
        self.model = model
        self.device = device
        self.codec_batch = codec_batch
        self.batch_rows = batch_rows
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = rank, world_size
        self.stats = ReadStats()  # of the last iteration in this process
        self._codec: Codec | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = load_codec(self.model, self.device, self.codec_batch)
        return self._codec

    def my_units(self) -> list[Unit]:
        """The units this consumer reads this epoch."""
        me, consumers = consumer_slot(self.rank, self.world_size)
        units = plan_units(self.files, consumers, shuffle=self.shuffle, seed=self.seed + self.epoch)
        return units[me::consumers]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, dict[str, Any]]]:
        self.stats = ReadStats()
        for unit in self.my_units():
            for rows in iter_unit(unit, self.batch_rows):
                for out in decode_rows(self.codec(), rows):
                    if self.stats.count(out):
                        yield item(out)
        if self.stats.error_rows or self.stats.bad_streams:
            logging.getLogger(__name__).warning(
                "archive read: %d rows, %d yielded, %d error rows, %d bad bitstreams skipped",
                self.stats.rows,
                self.stats.yielded,
                self.stats.error_rows,
                self.stats.bad_streams,
            )


def iter_unit(unit: Unit, batch_rows: int) -> Iterator[list[dict[str, Any]]]:
    """Stream one unit's rows, ``batch_rows`` row dicts at a time."""
    groups = None if unit.row_group is None else [unit.row_group]
    yield from iter_row_batches(unit.url, _READ_COLUMNS, batch_rows, groups)


def item(out: RowOutcome) -> tuple[str, torch.Tensor, dict[str, Any]]:
    """``(key, (3,H,W) uint8 tensor, meta)`` of a decoded row (torchvision's layout)."""
    meta = {c: out.row[c] for c in META_COLUMNS}
    meta["metadata"] = json.loads(out.row["metadata"] or "{}")
    return out.row["key"], torch.from_numpy(out.image).permute(2, 0, 1).contiguous(), meta
