"""Dataset recompression: encode-shards plus what it bought, per shard and in total.

    run_recompress(job, quality_sample=4)  -> report (also <out>/recompress_report.json|.md)

1. ``run_encode(job)``: every shard not yet done (the usual resumable job).
2. Quality on a sample of every done shard, on the same Ray cluster: ``QualityWorker``
   actors pick ``quality_sample`` ok rows spread evenly over the shard, stream the source
   tar up to the last picked sample (decoding only the picked images), check each image
   field's SHA-256 against the row, decode the bitstreams and compare: PSNR and MS-SSIM
   (``pytorch_msssim``; reported as null where it is not installed).
3. Bytes before/after per shard: the tar vs the Parquet (what the dataset costs to store),
   and the image fields vs the bitstreams (what the codec did).

Why a second pass and not inside encode: the encode worker keeps no decoded images around
(memory stays flat), and the sample is cheap: a few decodes per shard and one sequential
read of the tar's head, up to the last picked sample.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from oscar_core.metrics import ms_ssim, psnr

from . import storage
from .contract import EncodeJob, QualityTask, Resources, ShardQuality, WorkerConfig
from .dispatch import check_resources, execute, ray_session
from .outputs import JOB_CONFIG, join
from .parquet import read_table
from .recompress_report import recompress_markdown
from .report import STATS_SUFFIX, now_iso, read_json, read_stats, write_json
from .runner import run_encode
from .samples import (
    IMAGE_EXTS,
    SampleError,
    decode_image,
    group_by_key,
    name_text,
    tar_members,
)
from .storage_base import StorageError
from .worker import ShardWorker

log = logging.getLogger(__name__)

REPORT_STEM = "recompress_report"
DEFAULT_QUALITY_SAMPLE = 4


def pick_evenly(n_items: int, k: int) -> list[int]:
    """``k`` positions spread evenly over ``range(n_items)`` (all of them if k >= n)."""
    if k >= n_items:
        return list(range(n_items))
    if k <= 0:
        return []
    return sorted({int((i + 0.5) * n_items / k) for i in range(k)})


# ----------------------------------------------------------------- quality workers


class QualityWorker(ShardWorker):
    """A ShardWorker (one Codec) that also measures quality on a sample of a shard."""

    def quality_shard(self, task: QualityTask) -> ShardQuality:
        t0 = time.perf_counter()
        result = ShardQuality(task.name)
        columns = ["key", "index_in_shard", "status", "source_sha256", "bitstream"]
        table = read_table(task.parquet, columns=columns)
        ok = [r for r in table.to_pylist() if r["status"] == "ok"]
        picked = {ok[i]["index_in_shard"]: ok[i] for i in pick_evenly(len(ok), task.sample)}
        if not picked:
            result.seconds = time.perf_counter() - t0
            return result
        sources = self._read_sources(task.shard, picked)
        ready = []  # (row, source image, parsed bitstream)
        for index, row in sorted(picked.items()):
            source = sources.get(index)
            if isinstance(source, str):
                result.failures.append((row["key"], source))
                continue
            try:
                ready.append((row, source, self.codec.parse(row["bitstream"])))
            except ValueError as exc:  # BitstreamError is a ValueError
                result.failures.append((row["key"], f"bitstream: {exc}"))
        decoded = self.codec.decode_parsed([p for _, _, p in ready]) if ready else []
        for (row, source, _), image in zip(ready, decoded, strict=True):
            h, w = source.shape[:2]
            result.samples.append(
                {
                    "key": row["key"],
                    "width": w,
                    "height": h,
                    "bpp": 8 * len(row["bitstream"]) / (w * h),
                    "psnr": psnr(source, image),
                    "ms_ssim": ms_ssim(source, image) if _has_msssim() else None,
                }
            )
        result.seconds = time.perf_counter() - t0
        return result

    def _read_sources(self, url: str, picked: dict[int, dict]) -> dict[int, Any]:
        """index -> the source image (as coded: EXIF-oriented RGB) or why it is missing.

        Streams the tar only up to the last picked sample; only picked images are decoded.
        """
        out: dict[int, Any] = {}
        last = max(picked)
        with storage.open_read(url) as stream:
            members = tar_members(stream, max_member_bytes=self.config.max_member_bytes)
            for raw in group_by_key(members):
                if raw.index > last:
                    break
                row = picked.get(raw.index)
                if row is None:
                    continue
                if name_text(raw.key) != row["key"]:  # the row holds the key as text
                    out[raw.index] = f"source changed: key {raw.key!r} at index {raw.index}"
                    continue
                data = next((raw.fields[e] for e in IMAGE_EXTS if e in raw.fields), None)
                if data is None or hashlib.sha256(data).hexdigest() != row["source_sha256"]:
                    out[raw.index] = "source changed since encoding (SHA-256 differs)"
                    continue
                try:
                    out[raw.index] = decode_image(data, max_pixels=self.config.max_pixels).array
                except SampleError as exc:
                    out[raw.index] = f"source: {exc}"
        for index in picked:
            out.setdefault(index, "source sample not found in the shard")
        return out


def measure_quality(
    tasks: list[QualityTask], config: WorkerConfig, res: Resources, *, max_retries: int = 1
) -> tuple[dict[str, ShardQuality], list[tuple[QualityTask, str]]]:
    """Run ``QualityWorker.quality_shard`` over the tasks on Ray (connected by the caller
    or here); returns ({name: quality}, failures)."""
    results, failures, _ = execute(
        tasks,
        "quality_shard",
        config,
        res,
        max_retries=max_retries,
        backoff_s=1.0,
        progress=False,
        actor_class=QualityWorker,
    )
    return {q.name: q for q in results}, failures


# ------------------------------------------------------------------------ the job


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return round(sum(finite) / len(finite), 4) if finite else None


def _ratio(a: int | None, b: int | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run_recompress(job: EncodeJob, quality_sample: int = DEFAULT_QUALITY_SAMPLE) -> dict[str, Any]:
    """encode-shards, then bytes before/after and quality per shard; writes
    ``<out>/recompress_report.json`` and ``.md`` and returns the report."""
    if quality_sample < 0:
        raise ValueError(f'Invalid quality_sample "{quality_sample}"')
    t0 = time.perf_counter()
    res = job.resources or Resources()
    check_resources(res)  # before Ray starts (run_encode checks the rest)
    with ray_session(res.address):  # one Ray for both passes
        encode = run_encode(job)
        config = read_json(join(job.out, JOB_CONFIG))
        listing = set(storage.list_prefix(join(job.out, "")))
        done = [s for s in config["shards"] if join(job.out, s["name"] + STATS_SUFFIX) in listing]
        with ThreadPoolExecutor(16) as pool:  # small GETs and HEADs: latency bound
            stats = list(
                pool.map(lambda s: read_stats(join(job.out, s["name"] + STATS_SUFFIX)), done)
            )
            tar_bytes = list(pool.map(lambda s: _size(s["url"]), done))
            pq_bytes = list(pool.map(lambda s: _size(join(job.out, s["name"] + ".parquet")), done))
        quality: dict[str, ShardQuality] = {}
        quality_failed: list[tuple[QualityTask, str]] = []
        if quality_sample and done:
            tasks = [
                QualityTask(
                    s["url"], s["name"], join(job.out, s["name"] + ".parquet"), quality_sample
                )
                for s, st in zip(done, stats, strict=True)
                if st.ok
            ]
            wconf = WorkerConfig(
                job.model_dir,
                batch_size=job.batch_size,
                max_pixels=job.max_pixels,
                tile=job.tile,
                pixel_budget=job.pixel_budget,
            )
            if tasks:
                quality, quality_failed = measure_quality(tasks, wconf, res)
    rows = []
    for s, st, tb, pb in zip(done, stats, tar_bytes, pq_bytes, strict=True):
        q = quality.get(s["name"])
        rows.append(
            {
                "shard": s["name"],
                "rate": st.rate_index,
                "images": st.samples,
                "errors": st.errors,
                "tar_bytes": tb,
                "parquet_bytes": pb,
                "image_bytes": st.source_bytes,
                "bitstream_bytes": st.bitstream_bytes,
                "ratio": _ratio(st.source_bytes, st.bitstream_bytes),
                "bpp": round(8 * st.bitstream_bytes / st.pixels, 5) if st.pixels else None,
                "quality_n": len(q.samples) if q else 0,
                "psnr": _mean([x["psnr"] for x in q.samples]) if q else None,
                "ms_ssim": _mean([x["ms_ssim"] for x in q.samples]) if q else None,
            }
        )
    samples = [x for q in quality.values() for x in q.samples]
    total = {
        k: sum(r[k] or 0 for r in rows)
        for k in (
            "images",
            "errors",
            "tar_bytes",
            "parquet_bytes",
            "image_bytes",
            "bitstream_bytes",
        )
    }
    totals = {
        "shards": len(rows),
        **total,
        "saved_bytes": total["tar_bytes"] - total["parquet_bytes"],
        "tar_to_parquet_ratio": _ratio(total["tar_bytes"], total["parquet_bytes"]),
        "ratio": _ratio(total["image_bytes"], total["bitstream_bytes"]),
        "bpp": _mean_bpp(stats),
        "quality_n": len(samples),
        "psnr": _mean([x["psnr"] for x in samples]),
        "ms_ssim": _mean([x["ms_ssim"] for x in samples]),
    }
    report = {
        "command": "recompress",
        "out": job.out,
        "finished_at": now_iso(),
        "quality_sample": quality_sample,
        "ms_ssim_available": _has_msssim(),
        "encode": {"shards": asdict(encode.shards), "summary": asdict(encode.summary)},
        "totals": totals,
        "per_shard": rows,
        "quality_samples": {n: q.samples for n, q in sorted(quality.items())},
        "quality_failures": [
            [n, k, why] for n, q in sorted(quality.items()) for k, why in q.failures
        ]
        + [[t.name, "*", e] for t, e in quality_failed],
        "failed": encode.failed,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(join(job.out, REPORT_STEM + ".json"), report)
    storage.atomic_put(join(job.out, REPORT_STEM + ".md"), recompress_markdown(report).encode())
    return report


def _size(url: str) -> int | None:
    try:
        return storage.size(url)
    except StorageError as exc:  # a report detail: the shard may have moved
        log.warning("%s", exc)
        return None


def _mean_bpp(stats: list[Any]) -> float | None:
    pixels = sum(s.pixels for s in stats)
    return round(8 * sum(s.bitstream_bytes for s in stats) / pixels, 5) if pixels else None


def _has_msssim() -> bool:
    return importlib.util.find_spec("pytorch_msssim") is not None
