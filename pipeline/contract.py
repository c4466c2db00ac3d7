"""The pipeline's types: what a job asks, what a worker is given, what comes back.

    EncodeJob / DecodeJob   a whole run (``runner.run_encode`` / ``run_decode``)
    Resources               how many Ray actors, and what each asks for
    WorkerConfig            what every ``ShardWorker`` of a job is built with
    EncodeTask -> ShardResult      one tar shard -> its Parquet + stats JSON
    DecodeTask -> DecodeResult     one Parquet -> a WebDataset tar or files
    QualityTask -> ShardQuality    a sample of one encoded shard, compared with its source

Every task is a frozen dataclass with ``name`` and ``attempt`` (``dispatch.run_tasks``
retries with ``attempt + 1``); every result has ``images_done`` (the progress bar). A rate
travels as the ladder's ``Rate``, resolved once by the runner's ``RatePlan``; the worker's
codec takes it as is. ``ShardResult`` is also the shard's stats JSON, the done marker: its
fields are a file format (``to_json`` / ``from_dict``), so the rate is stored there as
``rate_index`` and ``nominal_bpp``, and the ``ShardDefinition`` (everything the shard's
output depends on) as the dict ``definition``: a re-run compares it before skipping a shard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from oscar_core import Rate
from oscar_core.codec import DEFAULT_MAX_PIXELS
from oscar_core.target import Target
from oscar_core.tiling import DEFAULT_TILE

from .samples import DEFAULT_MAX_MEMBER_BYTES

MAX_ERROR_KINDS = 20  # distinct error messages kept per shard (the rows hold them all)
# Decoded pixels one actor holds at a time (worker.py: "The pixel budget"): 4 images of the
# largest size allowed, ~0.8 GB of uint8 RGB; 64 web images of ~4 MP.
DEFAULT_PIXEL_BUDGET = 4 * DEFAULT_MAX_PIXELS


# --------------------------------------------------------------------------- jobs


@dataclass
class Resources:
    """How many actors and what each one asks Ray for (None = decide from the cluster)."""

    workers: int | None = None
    gpus_per_worker: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_worker: int | None = None  # also the actor's torch thread count
    address: str | None = None  # Ray cluster; default RAY_ADDRESS, else a local instance


@dataclass
class EncodeJob:
    src: str  # shard spec: brace range, glob, .txt list (local or s3)
    out: str
    model_dir: str
    rate: str | int | float | None = None  # as the user wrote it: ladder index or bpp
    rates_file: str | None = None
    target: str | None = None  # instead of rate: "psnr>=30", per image the lowest rate meeting it
    batch_size: int = 8
    max_retries: int = 3
    backoff_s: float = 1.0  # first retry delay; doubles per attempt
    overwrite: bool = False
    limit: int | None = None  # process at most this many pending shards in this run
    max_pixels: int = DEFAULT_MAX_PIXELS
    resources: Resources | None = None
    progress: bool = True
    precision: str = "fp32"  # "bf16": the workers' codec autocasts its heavy stages
    tile: int = DEFAULT_TILE  # tiled latent coding above tile**2 px (oscar_core/tiling.py)
    pixel_budget: int = DEFAULT_PIXEL_BUDGET  # decoded pixels in flight per actor


@dataclass
class DecodeJob:
    parquets: list[str]  # specs, each expanded like shard specs
    out: str
    model_dir: str
    format: str = "png"
    as_files: bool = False
    batch_size: int = 8
    max_retries: int = 3
    backoff_s: float = 1.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # a stream declaring more is a failed row
    resources: Resources | None = None
    progress: bool = True
    precision: str = "fp32"
    tile: int = DEFAULT_TILE  # the decoder's tiles (pixels depend on it above tile**2 px)
    pixel_budget: int = DEFAULT_PIXEL_BUDGET  # decoded pixels in flight per actor


# ------------------------------------------------------------------------ workers


@dataclass(frozen=True)
class WorkerConfig:
    model_dir: str
    batch_size: int = 8  # images per model call (same size only)
    threads: int = 1  # torch intra-op threads of this actor
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    chunk_batches: int = 8  # a chunk of batch_size * chunk_batches samples is grouped by size
    prefetch_chunks: int = 2  # decoded chunks waiting in the queue
    precision: str = "fp32"  # or "bf16": autocast of the heavy stages (oscar_core/precision.py)
    tile: int = DEFAULT_TILE  # the codec's tile in pixels (0: never tile)
    # decoded pixels held at a time: encode splits it among the chunks in flight, decode
    # decodes and writes a row batch's images in groups of at most this many pixels
    pixel_budget: int = DEFAULT_PIXEL_BUDGET


@dataclass(frozen=True)
class ShardDefinition:
    """What one shard's output depends on, stored in its stats JSON (the done marker).

    A re-run skips a done shard only when the job asks for the same definition; a different
    one stops the job before any work (``outputs.check_done_definitions``) unless
    ``--overwrite``. Not in it: what cannot change a row (batch size, workers, retries).
    """

    model_sha256: str  # SHA-256 of the model directory's config.json + model.safetensors
    codec_version: str  # oscar_core.CODEC_VERSION
    bitstream_version: int  # oscar_core.bitstream.VERSION
    schema_version: str  # parquet.SCHEMA_VERSION
    rate_index: int | None  # None: a quality-targeted shard (the rate is per image)
    nominal_bpp: float | None
    max_pixels: int  # decides which images are error rows
    precision: str  # fp32 / bf16: different pixels, different indices
    target: str | None = None  # "psnr>=30" (oscar_core.target.Target)
    tile: int = DEFAULT_TILE  # images over tile**2 px are encoded in tiles: other indices

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, recorded: dict[str, Any] | None) -> list[str]:
        """``field recorded -> asked`` for each field that differs from ``recorded`` (a
        stats JSON's ``definition``; None: written before definitions were recorded)."""
        if not recorded:
            return ["no recorded definition (written by an older version)"]
        return [
            f"{k} {recorded.get(k)!r} -> {v!r}"
            for k, v in self.to_dict().items()
            if recorded.get(k) != v
        ]


@dataclass(frozen=True)
class EncodeTask:
    shard: str  # input tar URL
    name: str  # output stem
    parquet_url: str
    stats_url: str
    # from the job's RatePlan, on the ladder of the model the worker loads: every image at
    # ``rate``, or (``target`` set, ``rate`` None) each at the lowest rate meeting the target
    rate: Rate | None
    definition: ShardDefinition | None = None  # recorded in the stats JSON
    target: Target | None = None
    attempt: int = 1


@dataclass(frozen=True)
class DecodeTask:
    parquet: str
    name: str
    output: str  # tar URL, or a directory URL when as_files
    format: str = "png"
    as_files: bool = False
    errors_url: str | None = None  # the listing of rows not written as asked (JSON lines)
    attempt: int = 1


@dataclass(frozen=True)
class QualityTask:
    shard: str  # the source tar
    name: str
    parquet: str
    sample: int  # images to compare
    attempt: int = 1


# ------------------------------------------------------------------------ results


@dataclass
class ShardResult:
    """One encoded shard, and its stats JSON. Sizes are bytes; times are seconds."""

    shard: str  # input URL
    name: str  # output name (file stem)
    parquet: str  # output URL
    rate_index: int | None  # None: quality-targeted (the rows hold each image's rate)
    nominal_bpp: float | None
    samples: int = 0  # rows written (ok + error)
    ok: int = 0
    errors: int = 0
    source_bytes: int = 0  # image fields of the ok samples
    bitstream_bytes: int = 0
    pixels: int = 0  # sum of width * height of the ok samples
    seconds: float = 0.0  # wall time of the whole shard (read, decode, code, write)
    model_seconds: float = 0.0  # time inside Codec.compress
    wait_seconds: float = 0.0  # time the model waited for decoded samples (I/O bound if high)
    attempt: int = 1
    model_id: str = ""
    codec_version: str = ""
    worker: dict[str, Any] = field(default_factory=dict)  # the worker's describe()
    error_kinds: dict[str, int] = field(default_factory=dict)  # message -> count
    finished_at: str = ""
    definition: dict[str, Any] | None = None  # ShardDefinition.to_dict() of the job
    target: str | None = None  # "psnr>=30": quality-targeted
    target_met: int = 0  # ok images that met the target

    @property
    def images_done(self) -> int:
        return self.samples

    def count_error(self, message: str) -> None:
        self.errors += 1
        kind = message.split(":")[0] if len(self.error_kinds) >= MAX_ERROR_KINDS else message
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# What a decode note says about a row: nothing written (ERROR: the decode failed;
# ENCODE_ERROR: an error row since encode), or written otherwise than asked (FALLBACK: in
# another format; RENAMED: the image under another field name, a carried field had its name).
NOTE_ERROR = "error"
NOTE_ENCODE_ERROR = "encode_error"
NOTE_FALLBACK = "fallback"
NOTE_RENAMED = "renamed"
NOTES_NOT_WRITTEN = (NOTE_ERROR, NOTE_ENCODE_ERROR)


@dataclass
class DecodeNote:
    """One line of a decode's ``<name>.errors`` listing."""

    index_in_shard: int | None  # identifies the row (keys may repeat in error rows)
    key: str  # as text (the Parquet's ``key``)
    kind: str  # one of the NOTE_* above
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)


@dataclass
class DecodeResult:
    """One decoded Parquet: how many rows became images, and what happened to the others."""

    parquet: str
    name: str
    output: str  # a tar URL, or a directory URL for --as-files
    rows: int = 0
    decoded: int = 0
    skipped_error_rows: int = 0  # rows that were already errors at encode time
    notes: list[DecodeNote] = field(default_factory=list)  # every row not written as asked
    bytes_out: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    attempt: int = 1
    worker: dict[str, Any] = field(default_factory=dict)

    @property
    def images_done(self) -> int:
        return self.decoded

    def notes_of(self, kind: str) -> list[DecodeNote]:
        return [n for n in self.notes if n.kind == kind]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(key, reason) of the rows whose decode failed (nothing written for them)."""
        return [(n.key, n.reason) for n in self.notes_of(NOTE_ERROR)]


@dataclass
class ShardQuality:
    """Quality on a sample of one shard; each sample is a JSON-ready dict with ``key``,
    ``width``, ``height``, ``bpp``, ``psnr`` and ``ms_ssim`` (null without pytorch_msssim)."""

    name: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    seconds: float = 0.0

    @property
    def images_done(self) -> int:
        return len(self.samples)
