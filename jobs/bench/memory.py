"""Benchmark section 6: peak RSS of one worker process for a shard of N vs 10N small images
(flat memory: the worker never holds a whole shard). Each shard runs in a fresh process
(``memory_probe``) so that the peak is that shard's alone. The goal is this benchmark's own.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from jobs.bench import shards
from jobs.bench.common import BenchContext, SectionResult, not_run, table, verdict
from oscar_core.images import center_crop

MEMORY_GOAL = 1.1  # bench's own: peak RSS of a 10x larger shard within 10% (flat memory)


def vm_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``: the peak RSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that the peak read later is that
    of the work done in between; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def run_probe(
    probe: Callable[..., dict], args: dict, env: dict[str, str] | None = None, timeout: float = 1800
) -> dict:
    """``probe(**args)`` in a fresh Python process (spawned, so its peak RSS is its own),
    started with ``env`` as its whole environment when given; its result (a dict). The
    probe's own exception is raised here; ``multiprocessing.TimeoutError`` after
    ``timeout`` seconds (the process is then killed)."""
    spawn = multiprocessing.get_context("spawn")
    with _environment(env):  # a spawned process starts with the environment of the moment
        pool = spawn.Pool(1)
    with pool:  # leaving it terminates the process, also after a time-out
        return pool.apply_async(probe, kwds=args).get(timeout)


@contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    """``os.environ`` replaced by ``env`` (None: unchanged) while the block runs."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def shard_sizes(ctx: BenchContext) -> tuple[int, int]:
    """The two shard sizes the memory sections compare: N and 10N images."""
    return (10, 100) if ctx.quick else (100, 1000)


def peak_growth(runs: dict[int, dict]) -> tuple[str, float, float]:
    """From runs by shard size (each with ``peak_rss_mib``): the summary text, the ratio of
    the largest shard's peak to the smallest's, and the KiB it grows per extra image."""
    (n0, small), (n1, big) = min(runs.items()), max(runs.items())
    ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
    per_image_kib = (big["peak_rss_mib"] - small["peak_rss_mib"]) * 1024 / (n1 - n0)
    text = (
        f"{n0} images {small['peak_rss_mib']:.0f} MiB, {n1} images "
        f"{big['peak_rss_mib']:.0f} MiB peak ({ratio:.2f}x)"
    )
    return text, ratio, per_image_kib


def memory_probe(model_dir: str, shard: str, out: str, rate: int, threads: int) -> dict:
    """Runs in a fresh process: one ShardWorker, one shard; RSS figures in MiB."""
    from pipeline.contract import EncodeTask, WorkerConfig
    from pipeline.worker import ShardWorker

    start = vm_kb("VmRSS")
    worker = ShardWorker(WorkerConfig(model_dir, threads=threads))
    loaded_peak, loaded = vm_kb("VmHWM"), vm_kb("VmRSS")
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    result = worker.encode_shard(
        EncodeTask(
            shard=shard,
            name="mem",
            parquet_url=os.path.join(out, "mem.parquet"),
            stats_url=os.path.join(out, "mem.stats.json"),
            rate=worker.codec.ladder[rate],
        )
    )
    return {
        "images": result.samples,
        "ok": result.ok,
        "seconds": time.perf_counter() - t0,
        "rss_start_mib": start / 1024,
        "peak_rss_loading_mib": loaded_peak / 1024,
        "rss_after_load_mib": loaded / 1024,
        "peak_reset_after_load": reset,
        "peak_rss_mib": vm_kb("VmHWM") / 1024,  # during the shard when reset, else overall
        "rss_end_mib": vm_kb("VmRSS") / 1024,
    }


def section_memory(ctx: BenchContext) -> SectionResult:
    """6. Peak RSS of one worker process for a shard of N vs 10N small images."""
    title, goal = "Memory", f"peak RSS at 10x the shard size <= {MEMORY_GOAL}x (bench goal)"
    api, why = shards.pipeline_api()
    if api is None:
        return not_run(title, goal, why, "peak RSS per actor, shards of 100 vs 1,000 images")
    tile = [center_crop(i, 64) for i in ctx.images]
    rate = shards.pipeline_rate(ctx)
    runs = {}
    for n in shard_sizes(ctx):
        shard = ctx.work_dir / "memory" / f"shard-{n}.tar"
        shards.write_shard(shard, tile, n)
        out = ctx.work_dir / "memory" / f"out-{n}"
        args = {
            "model_dir": str(ctx.model_dir),
            "shard": str(shard),
            "out": str(out),
            "rate": rate,
            "threads": ctx.threads,
        }
        runs[n] = run_probe(memory_probe, args)
    measured, ratio, per_image_kib = peak_growth(runs)
    ok = ratio <= MEMORY_GOAL
    side = tile[0].shape
    res = SectionResult(
        title=title,
        status=verdict(ok),
        goal=goal,
        measured=measured,
        shortfall=None if ok else f"{ratio:.2f}x, {ratio - MEMORY_GOAL:.2f}x over",
        method=(
            f"a fresh process per shard holding one ShardWorker (the Ray actor class, outside "
            f"Ray: Ray's own processes add ~1 GB across the node), {side[1]}x{side[0]} PNGs, "
            f"rate {rate}; peak = VmHWM, reset after the model is loaded (clear_refs 5) so it "
            "is the shard's peak"
        ),
        figures={f"peak_rss_{n}_mib": v["peak_rss_mib"] for n, v in runs.items()},
        tables=[
            table(
                "One worker process",
                ["images", "peak RSS in the shard MiB", "growth over loaded MiB"]
                + ["RSS after model load MiB", "peak while loading MiB", "seconds"],
                [
                    [n, v["peak_rss_mib"], v["peak_rss_mib"] - v["rss_after_load_mib"]]
                    + [v["rss_after_load_mib"], v["peak_rss_loading_mib"], v["seconds"]]
                    for n, v in runs.items()
                ],
            )
        ],
        details={"runs": {str(n): v for n, v in runs.items()}},
    )
    if not ok:
        res.reason = (
            f"peak grows {per_image_kib:.0f} KiB per extra image: something holds the shard"
        )
    return res
