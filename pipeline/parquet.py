"""The Parquet output of ``encode-shards``: one file per input shard, one row per sample.

Every sample of a shard has exactly one row, ``status`` "ok" (with its bitstream) or "error"
(with ``error_message``), so a table of outputs answers "what happened to key X" without
the logs. The schema is fixed here and nowhere else; ``docs/pipeline.md`` has the table.

Row groups: rows are buffered and written in groups of ``ROW_GROUP_ROWS`` rows or
``ROW_GROUP_BYTES`` of bitstreams, whichever comes first. Why these sizes: a shard holds
thousands of small images (bitstreams of 0.1-10 kB), so a shard file is a few MB and one or
a few row groups keep the footer small and let readers prune by statistics, while bounding
the writer's buffer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from oscar_core.target import Outcome, Target, TargetResult

from . import storage
from .samples import name_from_bytes

log = logging.getLogger(__name__)

# 2: ``key_bytes`` (exact key bytes) and ``image_field`` (which field held the image)
# 3: the ``target*`` columns of quality-targeted encoding (null for a fixed-rate shard)
SCHEMA_VERSION = "3"
ROW_GROUP_ROWS = 4096
ROW_GROUP_BYTES = 64 << 20

TRIAL = pa.struct(
    [
        pa.field("rate_index", pa.int8()),
        pa.field("bytes", pa.int32()),
        pa.field("value", pa.float64()),
    ]
)
SCHEMA = pa.schema(
    [
        # WebDataset key (member path up to the first dot of its basename) as UTF-8 text,
        # each byte that is not UTF-8 written \xNN (samples.name_text) ...
        pa.field("key", pa.string(), nullable=False),
        # ... and its exact bytes from the tar; decode writes these (null: take ``key``)
        pa.field("key_bytes", pa.binary()),
        pa.field("shard", pa.string(), nullable=False),  # input shard URL
        pa.field("index_in_shard", pa.int32(), nullable=False),  # position, 0-based
        pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
        pa.field("error_message", pa.string()),  # null when ok
        pa.field("rate_index", pa.int8()),  # ladder index used (null on error)
        pa.field("nominal_bpp", pa.float64()),  # the rate's nominal bpp
        pa.field("measured_bpp", pa.float64()),  # 8 * bitstream_bytes / (width * height)
        pa.field("pseudo_timestep", pa.int16()),  # the rate's t_r
        pa.field("width", pa.int32()),  # after EXIF orientation
        pa.field("height", pa.int32()),
        pa.field("image_field", pa.string()),  # the field the image came from: jpg, png, ...
        pa.field("source_format", pa.string()),  # Pillow format name: JPEG, PNG, ...
        pa.field("source_mode", pa.string()),  # Pillow mode before RGB: RGB, RGBA, I;16, CMYK
        pa.field("source_frames", pa.int32()),  # > 1: an animation, first frame coded
        pa.field("source_bytes", pa.int64()),  # size of the image field in the tar
        pa.field("source_sha256", pa.string()),  # hex digest of the image field
        pa.field("bitstream", pa.binary()),  # the OSCAR bitstream (null on error)
        pa.field("bitstream_bytes", pa.int32()),
        pa.field("model_id", pa.string()),  # hex, as in the bitstream header
        pa.field("codec_version", pa.string()),
        pa.field("metadata", pa.string()),  # JSON object: the other fields (samples.metadata_json)
        pa.field("encode_ms", pa.float32()),  # model time per image (batch time / batch)
        # Quality-targeted encoding (``--target``; all null at a fixed rate): the target as
        # written ("psnr>=30"), the value the chosen stream's decoded image reached, the rates
        # tried (each an encode + decode + metric), whether it met the target (false: the top
        # rate and even it misses), and every trial (rate, stream bytes, value)
        pa.field("target", pa.string()),
        pa.field("target_value", pa.float64()),
        pa.field("target_trials", pa.int8()),
        pa.field("target_met", pa.bool_()),
        pa.field("target_tried", pa.list_(TRIAL)),
    ],
    metadata={"oscar.schema_version": SCHEMA_VERSION},
)
COLUMNS = tuple(SCHEMA.names)
# Columns a reader may find missing: added after files were written (schema 2 lacks them);
# such a file still decodes
ADDED_IN_3 = ("target", "target_value", "target_trials", "target_met", "target_tried")


class ShardParquetWriter:
    """Writes rows to a local Parquet file with the fixed schema (a context manager).

    Rows are dicts with any subset of ``COLUMNS`` (missing -> null); unknown keys are a
    programming error and raise. The file is complete only after ``close()``.
    """

    def __init__(self, path: str, *, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.path = path
        self.rows_written = 0
        self._row_group_rows = row_group_rows
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        # zstd: the bitstreams are already entropy coded, but keys, metadata JSON and the
        # repeated strings compress well; dictionaries for the low-cardinality columns.
        self._writer = pq.ParquetWriter(
            path,
            SCHEMA,
            compression="zstd",
            use_dictionary=["shard", "status", "source_format", "source_mode", "model_id"],
        )

    def write(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown Parquet columns {sorted(unknown)}")
        self._buffer.append(row)
        self._buffer_bytes += len(row.get("bitstream") or b"") + len(row.get("metadata") or "")
        if len(self._buffer) >= self._row_group_rows or self._buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=SCHEMA)
        self._writer.write_table(table, row_group_size=len(self._buffer))
        self.rows_written += len(self._buffer)
        self._buffer, self._buffer_bytes = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> ShardParquetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def target_columns(target: Target, found: TargetResult) -> dict[str, Any]:
    """The ``target*`` columns of one targeted row (NaN, e.g. MS-SSIM of a tiny image: null)."""

    def value(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {
        "target": str(target),
        "target_value": value(found.achieved),
        "target_trials": found.trials,
        "target_met": found.met,
        "target_tried": [
            {"rate_index": r, "bytes": n, "value": value(v)} for r, (n, v) in found.tried.items()
        ],
    }


def target_outcomes(url: str) -> dict[str, list[Outcome]]:
    """target -> its ok rows' ``Outcome`` in one shard Parquet (seven small columns, a row
    group at a time, never the bitstreams); {} for a fixed-rate shard or a schema 2 file."""
    with storage.open_seekable(url) as f:  # the footer only
        if pq.ParquetFile(f).schema_arrow.get_field_index("target") < 0:
            return {}
    cols = ["status", "rate_index", "width", "height", "target", "target_met", "target_tried"]
    out: dict[str, list[Outcome]] = {}
    for rows in iter_row_batches(url, columns=cols):
        for row in rows:
            if row["status"] != "ok" or row["target"] is None:
                continue
            tried = {
                t["rate_index"]: (t["bytes"], math.nan if t["value"] is None else t["value"])
                for t in row["target_tried"]
            }
            pixels = row["width"] * row["height"]
            outcome = Outcome(row["rate_index"], row["target_met"], tried, pixels)
            out.setdefault(row["target"], []).append(outcome)
    return out


def check_schema(schema: pa.Schema, url: str) -> None:
    """Raise ValueError unless ``schema`` has every column of ours with the same type."""
    for name in COLUMNS:
        idx = schema.get_field_index(name)
        if idx < 0 and name in ADDED_IN_3:
            continue
        if idx < 0:
            raise ValueError(f"{url}: not an OSCAR shard Parquet (missing column {name!r})")
        if not schema.field(idx).type.equals(SCHEMA.field(name).type):
            raise ValueError(
                f"{url}: column {name!r} has type {schema.field(idx).type}, "
                f"expected {SCHEMA.field(name).type}"
            )


def iter_row_batches(
    url: str,
    columns: list[str] | None = None,
    batch_rows: int = 256,
    row_groups: list[int] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Stream a shard Parquet (all row groups, or ``row_groups``) as lists of row dicts,
    ``batch_rows`` at most, a batch never spanning two row groups.

    Never the whole file, in memory or on disk: ``storage.open_seekable`` fetches the footer,
    then each row group in turn (on S3 one ranged GET of its ``columns``' chunks). Memory:
    one row group (at most ``ROW_GROUP_ROWS`` rows, ~``ROW_GROUP_BYTES``) plus a batch.
    Why one ``iter_batches`` call per row group: given them all, pyarrow (``pre_buffer``,
    its default) reads every row group's chunks up front, i.e. the whole file.
    """
    with storage.open_seekable(url) as f:
        pf = pq.ParquetFile(f)
        check_schema(pf.schema_arrow, url)
        for group in range(pf.num_row_groups) if row_groups is None else row_groups:
            for batch in pf.iter_batches(batch_rows, row_groups=[group], columns=columns):
                yield batch.to_pylist()


def row_key(row: dict[str, Any]) -> str:
    """A row's key as the pipeline's ``str`` (``samples.name_from_bytes``): from the exact
    ``key_bytes`` where written, else the ``key`` text (a Parquet written by another tool)."""
    raw = row.get("key_bytes")
    return name_from_bytes(raw) if raw is not None else row["key"]


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    """A whole shard Parquet as a pyarrow Table (for tests, reports and small shards), read
    by ranges like ``iter_row_batches`` (no local copy)."""
    with storage.open_seekable(url) as f:
        table = pq.ParquetFile(f).read(columns=columns)
    if columns is None:
        check_schema(table.schema, url)
    return table
