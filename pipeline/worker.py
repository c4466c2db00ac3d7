"""``ShardWorker``: one process, one ``Codec``, shards in and out (the Ray actor class).

The runner wraps this plain class with ``ray.remote(num_cpus=..., num_gpus=...)``; tests may
also call it directly. The contract, one call per shard::

    encode_shard(EncodeTask) -> ShardResult    tar shard -> Parquet + stats JSON (last)
    decode_shard(DecodeTask) -> DecodeResult   Parquet -> WebDataset tar or files

Inside ``encode_shard`` two things overlap: a background thread streams the tar from
storage and decodes images (Pillow releases the GIL), handing chunks over a bounded queue,
while the caller's thread runs the model (torch releases the GIL too; ``prefetch.Prefetch``).
Memory is bounded in pixels, not images: chunks close at ``pixel_budget / (prefetch_chunks
+ 2)`` decoded pixels (the pixel budget, 256 MP by default; an image over that share goes
alone: ``budget.py``), so the chunks queued, being coded and being filled hold at most the
budget; decode writes a row batch in groups within it. The codec's own memory is bounded by
its tiles (``tile``, ``oscar_core/tiling.py``).

Failure rules: a bad sample is an error row; an image the codec rejects (ValueError) or
cannot fit in memory is an error row; anything else (storage, a broken device) fails the
shard, and the runner retries it. On decode, likewise, a row that cannot be written (a bad
bitstream or key, Pillow refusing the image) is a note in the result and in the
``<name>.errors`` listing, and the rest of the shard is written. A worker that cannot start
(the model does not load, a GPU slot without CUDA: ``placement.pick_device``) stops the job
before any shard runs.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from oscar_core import CODEC_VERSION, Codec, Rate
from oscar_core.target import TargetResult, compress_to_target

from . import storage
from .budget import chunk_pixels, pixel_chunks
from .contract import (
    NOTE_ENCODE_ERROR,
    NOTE_ERROR,
    NOTE_FALLBACK,
    NOTE_RENAMED,
    DecodeNote,
    DecodeResult,
    DecodeTask,
    EncodeTask,
    ShardResult,
    WorkerConfig,
)
from .parquet import ShardParquetWriter, iter_row_batches, row_key, target_columns
from .placement import pick_device, ray_gpu_ids, ray_node
from .prefetch import Prefetch
from .report import now_iso, write_notes, write_stats
from .samples import (
    Sample,
    metadata_json,
    name_bytes,
    name_text,
    read_samples,
    restore_fields,
)
from .sinks import FORMATS, FileSink, TarSink, encode_decoded, image_name, open_sink, safe_key
from .storage_base import StorageError

log = logging.getLogger(__name__)

# Columns decode reads (bitstreams and carried fields; not the encode statistics)
DECODE_COLUMNS = (
    "key",
    "key_bytes",
    "index_in_shard",
    "status",
    "error_message",
    "image_field",
    "bitstream",
    "metadata",
)


@dataclass(frozen=True)
class Coded:
    """One image's stream and how it was coded (``found``: the targeted search's outcome)."""

    stream: bytes
    rate: Rate
    ms: float  # model time per image (batch time / batch)
    found: TargetResult | None = None


class ShardWorker:
    """Holds one Codec for its lifetime; processes one shard per call."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        torch.set_num_threads(max(1, config.threads))
        # Our header check enforces max_pixels; lift Pillow's own (coarser, process-wide)
        # bomb limit so it never rejects an image the job's limit allows.
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < config.max_pixels:
            Image.MAX_IMAGE_PIXELS = config.max_pixels
        self.gpu_ids = ray_gpu_ids()
        device = pick_device(self.gpu_ids)
        # max_pixels: a 40-byte stream with a valid CRC can declare 65535x65535; Parquet
        # bitstreams are untrusted, like tar images: parse refuses it before entropy decoding.
        # A precision the device lacks or a bad tile is a ValueError.
        self.codec = Codec.from_pretrained(  # an s3:// model is cached on this node first
            storage.local_model_dir(config.model_dir),
            device=device,
            batch_size=config.batch_size,
            precision=config.precision,
            max_pixels=config.max_pixels,
            tile=config.tile,
        )
        self.model_id = self.codec.model_id.hex()
        log.info("worker pid %d ready on %s (model %s)", os.getpid(), device, self.model_id)

    def describe(self) -> dict[str, Any]:
        """Where this worker runs: the runner logs it and the tests check GPU pinning and
        (node_id) that a multi-node job spread its actors over the nodes."""
        node_id, node_ip = ray_node()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": node_id,
            "node_ip": node_ip,
            "device": str(self.codec.device),
            "gpu_ids": [str(g) for g in self.gpu_ids],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": torch.get_num_threads(),
            "batch_size": self.config.batch_size,
            "precision": self.codec.precision,
            "model_id": self.model_id,
        }

    # -- encode --------------------------------------------------------------------------
    def encode_shard(self, task: EncodeTask) -> ShardResult:
        t0 = time.perf_counter()
        rate = task.rate
        if rate is not None and rate not in self.codec.ladder.rates:  # the model changed
            raise ValueError(f"{rate} is not on the ladder of model {self.model_id}")
        if (rate is None) == (task.target is None):
            raise ValueError(
                f"shard {task.shard}: give a rate or a target (got {rate}, {task.target})"
            )
        result = ShardResult(
            shard=task.shard,
            name=task.name,
            parquet=task.parquet_url,
            rate_index=rate.index if rate else None,
            nominal_bpp=rate.nominal_bpp if rate else None,
            target=str(task.target) if task.target else None,
            attempt=task.attempt,
            model_id=self.model_id,
            codec_version=CODEC_VERSION,
            worker=self.describe(),
            definition=task.definition.to_dict() if task.definition else None,
        )
        with tempfile.TemporaryDirectory(prefix="oscar-shard-") as tmp:
            local = os.path.join(tmp, "shard.parquet")
            # 1. Stream, decode and code, writing rows in shard order
            with (
                ShardParquetWriter(local) as writer,
                Prefetch(lambda: self._chunks(task.shard), self.config.prefetch_chunks) as pre,
            ):
                for chunk in pre:
                    for row in self._encode_chunk(chunk, task, result):
                        writer.write(row)
            result.wait_seconds = pre.wait_seconds
            # 2. Publish the Parquet, then the stats JSON: the done marker comes last
            storage.atomic_put_file(task.parquet_url, local)
        result.seconds = time.perf_counter() - t0
        result.finished_at = now_iso()
        write_stats(task.stats_url, result)
        log.info(
            "%s: %d samples (%d errors) in %.1fs",
            task.name,
            result.samples,
            result.errors,
            result.seconds,
        )
        return result

    def _chunks(self, url: str) -> Iterator[list[Sample]]:
        """Runs in the prefetch thread: the shard's samples in chunks (budget.py)."""
        cfg = self.config
        share = chunk_pixels(cfg.pixel_budget, cfg.prefetch_chunks)  # of the pixel budget
        most = cfg.batch_size * cfg.chunk_batches
        with storage.open_read(url) as stream:
            samples = read_samples(
                stream, max_pixels=cfg.max_pixels, max_member_bytes=cfg.max_member_bytes
            )
            yield from pixel_chunks(samples, lambda s: s.pixels, most, share)

    def _encode_chunk(
        self, chunk: list[Sample], task: EncodeTask, result: ShardResult
    ) -> Iterator[dict[str, Any]]:
        """Code the chunk's good images in same-size batches; yield rows in chunk order."""
        coded: dict[int, Coded | str] = {}  # position -> outcome | error
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for pos, sample in enumerate(chunk):
            if sample.image is not None:
                groups[sample.image.shape].append(pos)
        for positions in groups.values():
            for i in range(0, len(positions), self.config.batch_size):
                batch = positions[i : i + self.config.batch_size]
                coded.update(self._compress(batch, [chunk[p] for p in batch], task, result))
        for pos, sample in enumerate(chunk):
            outcome = coded.get(pos, sample.error or "not coded")
            yield self._row(sample, task, outcome, result)

    def _compress(
        self, positions: list[int], samples: list[Sample], task: EncodeTask, result: ShardResult
    ) -> dict[int, Coded | str]:
        """One model call (a targeted search: a few); if the codec rejects the batch, retry
        image by image so only the bad image becomes an error row."""
        t0 = time.perf_counter()
        images = [s.image for s in samples]
        try:
            if task.target is not None:
                found = compress_to_target(self.codec, images, task.target)
            else:
                streams = self.codec.compress(images, task.rate)
        except (ValueError, MemoryError, torch.OutOfMemoryError) as exc:
            if len(samples) == 1:
                return {positions[0]: f"encode failed: {type(exc).__name__}: {exc}"}
            out: dict[int, Coded | str] = {}
            for pos, sample in zip(positions, samples, strict=True):
                out.update(self._compress([pos], [sample], task, result))
            return out
        dt = time.perf_counter() - t0
        result.model_seconds += dt
        ms = 1000 * dt / len(samples)
        if task.target is not None:
            return {
                p: Coded(f.stream, f.rate, ms, f) for p, f in zip(positions, found, strict=True)
            }
        return {p: Coded(s, task.rate, ms) for p, s in zip(positions, streams, strict=True)}

    def _row(
        self,
        sample: Sample,
        task: EncodeTask,
        outcome: Coded | str,
        result: ShardResult,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "key": name_text(sample.key),  # a Parquet string is UTF-8; the bytes go beside
            "key_bytes": name_bytes(sample.key),
            "shard": name_text(task.shard),
            "index_in_shard": sample.index,
            "image_field": sample.image_ext,
            "source_format": sample.source_format,
            "source_mode": sample.source_mode,
            "source_frames": sample.source_frames,
            "source_bytes": sample.source_bytes,
            "source_sha256": sample.source_sha256,
            "model_id": self.model_id,
            "codec_version": CODEC_VERSION,
            "metadata": metadata_json(sample.metadata),
        }
        result.samples += 1
        if isinstance(outcome, str):
            message = name_text(outcome)  # it may quote a name that is not UTF-8
            result.count_error(message)
            return {**row, "status": "error", "error_message": message}
        stream, rate, found = outcome.stream, outcome.rate, outcome.found
        height, width = sample.image.shape[:2]  # type: ignore[union-attr]
        result.ok += 1
        result.target_met += bool(found and found.met)
        result.source_bytes += sample.source_bytes or 0
        result.bitstream_bytes += len(stream)
        result.pixels += width * height
        return {
            **row,
            "status": "ok",
            "rate_index": rate.index,
            "nominal_bpp": rate.nominal_bpp,
            "measured_bpp": 8 * len(stream) / (width * height),
            "pseudo_timestep": rate.t,
            "width": width,
            "height": height,
            "bitstream": stream,
            "bitstream_bytes": len(stream),
            "encode_ms": outcome.ms,
            **(target_columns(task.target, found) if found else {}),
        }

    # -- decode --------------------------------------------------------------------------
    def decode_shard(self, task: DecodeTask) -> DecodeResult:
        """Every row of the Parquet is either written to the output or noted in the result
        (and in ``task.errors_url``, one JSON line per row): an error row of encode, a row
        whose decode failed, or one written otherwise than asked (fallback format, image
        renamed to spare a carried field). Only storage errors fail the shard."""
        if task.format not in FORMATS:
            raise ValueError(f'Invalid format "{task.format}", should be one of {sorted(FORMATS)}')
        t0 = time.perf_counter()
        result = DecodeResult(task.parquet, task.name, task.output, attempt=task.attempt)
        result.worker = self.describe()
        sink = open_sink(task.output, as_files=task.as_files)
        try:
            for rows in iter_row_batches(task.parquet, columns=list(DECODE_COLUMNS)):
                self._decode_rows(rows, task.format, sink, result)
            sink.close()
        except BaseException:
            sink.abort()
            raise
        # In row order (a batch notes parse errors before decode ones); after the output: a
        # listing never describes an output that is not there.
        result.notes.sort(key=lambda n: -1 if n.index_in_shard is None else n.index_in_shard)
        if task.errors_url:
            write_notes(task.errors_url, result.notes)
        result.bytes_out = sink.bytes_out
        result.seconds = time.perf_counter() - t0
        return result

    def _decode_rows(
        self, rows: list[dict[str, Any]], fmt: str, sink: TarSink | FileSink, result: DecodeResult
    ) -> None:
        ready = []  # (row, key, parsed bitstream, carried fields)
        for row in rows:
            result.rows += 1
            if row["status"] != "ok":
                result.skipped_error_rows += 1
                _note(result, row, NOTE_ENCODE_ERROR, row["error_message"] or "error row")
                continue
            try:  # the sample boundary: anything wrong with this row's data is its note
                key = safe_key(row_key(row))  # before the model: no work for a bad key
                fields = restore_fields(row["metadata"])
                ready.append((row, key, self.codec.parse(row["bitstream"] or b""), fields))
            except Exception as exc:  # noqa: BLE001 - recorded; the shard goes on
                _note(result, row, NOTE_ERROR, f"{type(exc).__name__}: {exc}")
        # decoded and written in groups within the pixel budget (sizes from the headers)
        size = lambda r: r[2].header.height * r[2].header.width  # noqa: E731
        for group in pixel_chunks(ready, size, len(ready), self.config.pixel_budget):
            images = self._decompress([p for _, _, p, _ in group], result)
            for (row, key, _, fields), image in zip(group, images, strict=True):
                if isinstance(image, str):
                    _note(result, row, NOTE_ERROR, image)
                    continue
                try:
                    self._write(sink, row, key, image, fields, fmt, result)
                except StorageError:
                    raise  # the network, not the data: the shard is retried
                except Exception as exc:  # noqa: BLE001 - Pillow, a key the sink refuses: noted
                    _note(result, row, NOTE_ERROR, f"{type(exc).__name__}: {exc}")

    def _decompress(self, parsed: list[Any], result: DecodeResult) -> list[np.ndarray | str]:
        """Decode a batch; if the codec rejects it or runs out of memory, image by image so
        only the image at fault fails (a message in its place). Other errors (a broken
        device) fail the shard: retried, possibly on another worker."""
        if not parsed:
            return []
        t0 = time.perf_counter()
        try:
            images: list[np.ndarray | str] = list(self.codec.decode_parsed(parsed))
        except (ValueError, MemoryError, torch.OutOfMemoryError) as exc:
            if len(parsed) == 1:
                return [f"decode failed: {type(exc).__name__}: {exc}"]
            return [out for p in parsed for out in self._decompress([p], result)]
        result.model_seconds += time.perf_counter() - t0
        return images

    def _write(
        self,
        sink: TarSink | FileSink,
        row: dict[str, Any],
        key: str,
        image: np.ndarray,
        fields: dict[str, bytes],
        fmt: str,
        result: DecodeResult,
    ) -> None:
        """The image (as ``fmt``, or PNG where ``fmt`` cannot hold it) and every carried
        field under its own name; notes say where that differs from what was asked."""
        data, ext, fallback = encode_decoded(image, fmt)
        name = image_name(ext, fields)
        sink.add(key, {name: data, **fields})
        result.decoded += 1
        if fallback:
            _note(result, row, NOTE_FALLBACK, fallback)
        if name != ext:
            source = row.get("image_field") or "?"
            why = f"carried field {ext!r} kept; the image (from {source!r}) written as {name!r}"
            _note(result, row, NOTE_RENAMED, why)


def _note(result: DecodeResult, row: dict[str, Any], kind: str, reason: str) -> None:
    key = row["key"] if isinstance(row.get("key"), str) else repr(row.get("key"))
    note = DecodeNote(row.get("index_in_shard"), key[:1024], kind, name_text(reason)[:1000])
    result.notes.append(note)
