"""Benchmark section 4: images/s of the shard path (``ShardWorker.encode_shard``: tar read,
PNG decode, coding, Parquet and stats written) against the bare model on the same images,
both in one process. The goal is this benchmark's own (the issue states none).
"""

from __future__ import annotations

import statistics

from jobs.bench import shards
from jobs.bench.common import BenchContext, SectionResult, not_run, table
from jobs.bench.timing import measure

EFFICIENCY_GOAL = 0.9  # bench's own: the shard path keeps >= 90% of the bare model's rate


def section_efficiency(ctx: BenchContext) -> SectionResult:
    """4. images/s through ``ShardWorker.encode_shard`` vs ``codec.compress`` on the same
    images, both in the same worker (one process, one Codec, the same threads)."""
    title, goal = "Pipeline efficiency", f">= {EFFICIENCY_GOAL:.0%} of the bare model (bench goal)"
    api, why = shards.pipeline_api()
    if api is None:
        return not_run(title, goal, why, "images/s of encode-shards vs the bare model")
    rate = shards.pipeline_rate(ctx)
    count = len(ctx.images) * 2
    shard = ctx.work_dir / "eff" / "shard-000000.tar"
    shards.write_shard(shard, ctx.images, count)
    out = ctx.work_dir / "eff" / "out"
    worker = api["ShardWorker"](api["WorkerConfig"](str(ctx.model_dir), threads=ctx.threads))
    batch = worker.config.batch_size
    task = api["EncodeTask"](
        shard=str(shard),
        name="shard-000000",
        parquet_url=str(out / "shard-000000.parquet"),
        stats_url=str(out / "shard-000000.stats.json"),
        rate=worker.codec.ladder[rate],
    )
    arrays = [ctx.images[k % len(ctx.images)] for k in range(count)]
    results = []

    def run_shard():
        results.append(worker.encode_shard(task))

    bare = measure(lambda: worker.codec.compress(arrays, rate), ctx.repeats, ctx.warmup)
    piped = measure(run_shard, ctx.repeats, ctx.warmup)
    timed = results[ctx.warmup :]
    bad = [r for r in timed if r.ok != count]
    if bad:
        raise RuntimeError(
            f"encode_shard coded {bad[0].ok} of {count} images: {bad[0].error_kinds}"
        )
    bare_ips, pipe_ips = count / bare.median, count / piped.median
    eff = pipe_ips / bare_ips
    ok = eff >= EFFICIENCY_GOAL
    # medians over the timed runs of the worker's own accounting
    model_s = statistics.median(r.model_seconds for r in timed)
    wait_s = statistics.median(getattr(r, "wait_seconds", 0.0) for r in timed)
    shard_s = statistics.median(r.seconds for r in timed)
    res = SectionResult.judged(
        ok,
        f"{EFFICIENCY_GOAL - eff:.0%} below the goal",
        title=title,
        goal=goal,
        measured=f"{pipe_ips:.2f} vs {bare_ips:.2f} images/s = {eff:.0%}",
        method=(
            "one ShardWorker (the Ray actor class) called in this process: codec.compress on "
            "the decoded arrays vs encode_shard on a local tar of the same images as PNG "
            "(tar read + PNG decode in the prefetch thread, Parquet write, stats JSON)"
        ),
        figures={"bare_images_per_s": bare_ips, "shard_images_per_s": pipe_ips},
        tables=[
            table(
                f"{count} images, rate {rate}, batch {batch}, {ctx.threads} thread(s)",
                ["path", "images/s", "s per shard", "model s", "waiting for input s"],
                [
                    ["bare codec.compress", bare_ips, bare.median, bare.median, 0],
                    ["ShardWorker.encode_shard", pipe_ips, piped.median, model_s, wait_s],
                ],
            )
        ],
        details={
            "rate": rate,
            "images": count,
            "image_size": [ctx.images[0].shape[1], ctx.images[0].shape[0]],
            "batch_size": batch,
            "threads": ctx.threads,
            "bare_images_per_s": bare_ips,
            "shard_images_per_s": pipe_ips,
            "efficiency": eff,
            "shard_accounting": {
                "seconds": shard_s,
                "model_seconds": model_s,
                "wait_seconds": wait_s,
            },
        },
    )
    if not ok:
        other = shard_s - model_s - wait_s
        res.reason = (
            f"of {shard_s:.3f} s per shard: model {model_s:.3f} s, waiting for decoded "
            f"input {wait_s:.3f} s, the rest (tar/PNG thread, Parquet, hashing, stats) {other:.3f} s; "
            f"model time inside the shard is {model_s / bare.median:.2f}x the bare call"
        )
    return res
