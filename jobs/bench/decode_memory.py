"""Benchmark section 9: peak RSS and local disk of ``decode-shards`` for a shard of N vs 10N
small images, S3 in and S3 out (issue 13 item 7: decode's memory and disk stay flat in the
shard size).

Each shard is encoded first, in this process, to a Parquet on S3; then a fresh process
(``decode_probe``, one ``ShardWorker``, the Ray actor class outside Ray) decodes it into a
tar on S3. Its peak RSS is reset after the model is loaded (``memory.reset_peak_rss``), so
it is the shard's own. Local disk: the process runs with ``TMPDIR`` a fresh directory whose
size a thread samples every 5 ms (``temp peak``; where a staged copy of the Parquet or the
tar would go), and ``/proc/self/io`` ``write_bytes`` counts what it wrote to any local disk.
The S3 endpoint is section 8's (``s3.local_s3``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from typing import Any

from jobs.bench import shards
from jobs.bench.common import BenchContext, SectionResult, not_run, table
from jobs.bench.memory import peak_growth, reset_peak_rss, run_probe, shard_sizes, vm_kb
from jobs.bench.s3 import S3Unavailable, local_s3
from oscar_core.images import center_crop

DECODE_MEMORY_GOAL = 1.1  # bench's own: peak RSS at 10x the images within 10%, no disk
MiB = 1 << 20


def _written_bytes() -> int:
    """Bytes this process caused to be written to local storage (``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("write_bytes:"))


def _tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a temp file removed meanwhile
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


class _TreePeak(threading.Thread):
    """Samples the size of a directory tree every ``interval`` seconds; ``peak`` bytes."""

    def __init__(self, root: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.peak = root, interval, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _tree_bytes(self.root))
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _tree_bytes(self.root))
        return self.peak


def decode_probe(model_dir: str, parquet: str, out: str, threads: int) -> dict:
    """Runs in a fresh process: one ShardWorker decodes one Parquet to a tar; MiB figures."""
    import tempfile

    from pipeline.contract import DecodeTask, WorkerConfig
    from pipeline.worker import ShardWorker

    worker = ShardWorker(WorkerConfig(model_dir, threads=threads))
    loaded_peak, loaded = vm_kb("VmHWM"), vm_kb("VmRSS")
    reset = reset_peak_rss()
    watch = _TreePeak(tempfile.gettempdir())
    watch.start()
    written, t0 = _written_bytes(), time.perf_counter()
    result = worker.decode_shard(DecodeTask(parquet, "mem", out, format="png"))
    seconds, written = time.perf_counter() - t0, _written_bytes() - written
    return {
        "rows": result.rows,
        "decoded": result.decoded,
        "notes": len(result.notes),
        "bytes_out": result.bytes_out,
        "seconds": seconds,
        "rss_after_load_mib": loaded / 1024,
        "peak_rss_loading_mib": loaded_peak / 1024,
        "peak_reset_after_load": reset,
        "peak_rss_mib": vm_kb("VmHWM") / 1024,  # during the shard when reset, else overall
        "temp_peak_mib": watch.stop() / MiB,
        "disk_written_mib": written / MiB,
    }


def _decode_runs(api: dict[str, Any], ctx: BenchContext) -> dict[int, dict]:
    """Encode a shard of each size to S3, decode each in a fresh process; runs by size."""
    storage_s3 = api["storage_s3"]
    storage_s3.reset_s3_client()
    client = storage_s3.s3_client()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    worker = api["ShardWorker"](api["WorkerConfig"](str(ctx.model_dir), threads=ctx.threads))
    rate = worker.codec.ladder[shards.pipeline_rate(ctx)]
    tile = [center_crop(i, 64) for i in ctx.images]
    runs: dict[int, dict] = {}
    try:
        for n in shard_sizes(ctx):
            shard = ctx.work_dir / "decode-memory" / f"shard-{n}.tar"
            tar_bytes = shards.write_shard(shard, tile, n)
            enc = f"s3://{bucket}/enc/shard-{n}"
            task = api["EncodeTask"](
                str(shard), f"shard-{n}", enc + ".parquet", enc + ".stats.json", rate
            )
            worker.encode_shard(task)
            temp = ctx.work_dir / "decode-memory" / f"tmp-{n}"
            temp.mkdir()
            args = {
                "model_dir": str(ctx.model_dir),
                "parquet": task.parquet_url,
                "out": f"s3://{bucket}/dec/shard-{n}.tar",
                "threads": ctx.threads,
            }
            # no .pyc written by a late import: it would count as disk written
            env = {**os.environ, "TMPDIR": str(temp), "PYTHONDONTWRITEBYTECODE": "1"}
            runs[n] = run_probe(decode_probe, args, env)
            head = client.head_object(Bucket=bucket, Key=f"enc/shard-{n}.parquet")
            runs[n].update(tar_in_mib=tar_bytes / MiB, parquet_mib=head["ContentLength"] / MiB)
            head = client.head_object(Bucket=bucket, Key=f"dec/shard-{n}.tar")
            runs[n]["tar_out_mib"] = head["ContentLength"] / MiB
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)
        storage_s3.reset_s3_client()
    return runs


def section_decode_memory(ctx: BenchContext) -> SectionResult:
    """9. Peak RSS and local disk of one decoding worker, shards of N vs 10N images."""
    title = "Decode memory"
    goal = f"decode peak RSS at 10x the shard size <= {DECODE_MEMORY_GOAL}x, 0 bytes on disk"
    todo = "decode-shards peak RSS and local disk, S3 to S3, shards of 100 vs 1,000 images"
    api, why = shards.pipeline_api()
    if api is None:
        return not_run(title, goal, why, todo)
    try:
        with local_s3():
            runs = _decode_runs(api, ctx)
    except S3Unavailable as exc:
        return not_run(title, goal, str(exc), todo)
    measured, ratio, per_image_kib = peak_growth(runs)
    disk = max(max(r["temp_peak_mib"], r["disk_written_mib"]) for r in runs.values())
    ok = ratio <= DECODE_MEMORY_GOAL and disk == 0
    why = f"peak +{per_image_kib:.0f} KiB per extra image, {disk:.1f} MiB on local disk"
    return SectionResult.judged(
        ok,
        f"{ratio:.2f}x RSS, {disk:.1f} MiB on local disk",
        title=title,
        goal=goal,
        measured=f"{measured}; local disk {disk:.1f} MiB at most",
        method=(
            "per size: encode a shard of 64x64 PNGs to a Parquet on S3 (this process), then "
            "a fresh process holding one ShardWorker (outside Ray) decodes it to a tar on S3 "
            "(--format png); peak = VmHWM reset after the model is loaded (clear_refs 5); "
            "temp peak = the largest size of the process's TMPDIR (a fresh directory) sampled "
            "every 5 ms; disk written = /proc/self/io write_bytes over the decode"
        ),
        figures={f"decode_peak_rss_{n}_mib": v["peak_rss_mib"] for n, v in runs.items()},
        tables=[
            table(
                "One decoding worker process, S3 to S3",
                ["images", "Parquet MiB", "tar out MiB", "peak RSS in the shard MiB"]
                + ["growth over loaded MiB", "temp peak MiB", "disk written MiB", "seconds"],
                [
                    [n, v["parquet_mib"], v["tar_out_mib"], v["peak_rss_mib"]]
                    + [v["peak_rss_mib"] - v["rss_after_load_mib"], v["temp_peak_mib"]]
                    + [v["disk_written_mib"], v["seconds"]]
                    for n, v in runs.items()
                ],
            )
        ],
        reason=None if ok else why,
        details={"runs": {str(n): v for n, v in runs.items()}},
    )
