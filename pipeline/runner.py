"""The job driver: shards in, workers out, report back.

    run_encode(EncodeJob)   tar shards -> <out>/<name>.parquet + <name>.stats.json
    run_decode(DecodeJob)   Parquets   -> <out>/<name>.tar (or <out>/<name>/<key>.<ext>)

Steps of a run: 1. validate everything (model dir, rates, shard list, output names, that the
output is writable, that shards already done were done as this job asks: same
``ShardDefinition``, else exit 2 naming the difference unless ``overwrite``) before any
work; 2. write the resolved job config next to the outputs; 3. skip shards whose stats JSON
exists; 4. start ``ShardWorker`` actors on Ray (a local instance bound to 127.0.0.1 unless
an address is given); 5. hand out shards, retrying a failed one with exponential backoff and
replacing an actor that died; 6. write the report.

The output's layout, names and done markers: ``outputs.py``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

from oscar_core import CODEC_VERSION, OscarConfig, OscarModel, Rate
from oscar_core.config import WEIGHTS_NAME
from oscar_core.tiling import check_tile

from . import storage
from .contract import (
    NOTE_FALLBACK,
    NOTE_RENAMED,
    DecodeJob,
    DecodeTask,
    EncodeJob,
    EncodeTask,
    Resources,
    ShardResult,
    WorkerConfig,
)
from .dispatch import check_resources, execute
from .outputs import (
    JOB_CONFIG,
    check_done_definitions,
    join,
    model_sha256,
    shard_definitions,
    unique_names,
)
from .rates import RatePlan, chosen_dict
from .report import (
    ERRORS_SUFFIX,
    FAILED_SUFFIX,
    STATS_SUFFIX,
    DecodeReport,
    DecodeShardLine,
    DecodeShards,
    EncodeReport,
    EncodeShardLine,
    EncodeShards,
    decode_summary,
    encode_summary,
    now_iso,
    target_report,
    write_job_report,
    write_json,
)
from .sinks import FORMATS

log = logging.getLogger(__name__)


def _check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value < (0 if name == "max_retries" else 1):
            raise ValueError(f'Invalid {name} "{value}"')


def _redact(address: str | None) -> str | None:
    """Drop user:password@ from an address before it is written anywhere."""
    return re.sub(r"//[^/@]*@", "//", address) if address else address


# --------------------------------------------------------------------------- encode


def _check_model(model_dir: str) -> tuple[OscarConfig, str]:
    """The model's config and its local directory (an s3 one downloaded once to a cache)."""
    model_dir = storage.local_model_dir(model_dir)
    config = OscarModel.config_from_pretrained(model_dir)  # FileNotFoundError / ValueError
    if not os.path.isfile(os.path.join(model_dir, WEIGHTS_NAME)):
        raise FileNotFoundError(f"model directory {model_dir}: missing {WEIGHTS_NAME}")
    return config, model_dir


def _dispatch(job: EncodeJob | DecodeJob, tasks: list, method: str, res: Resources) -> tuple:
    """Run ``tasks`` on ShardWorker actors built from the job's settings: (results,
    failures, workers) as ``dispatch.execute`` returns them."""
    wconf = WorkerConfig(
        job.model_dir,
        batch_size=job.batch_size,
        max_pixels=job.max_pixels,
        precision=job.precision,
        tile=job.tile,
        pixel_budget=job.pixel_budget,
    )
    return execute(
        tasks,
        method,
        wconf,
        res,
        max_retries=job.max_retries,
        backoff_s=job.backoff_s,
        progress=job.progress,
    )


def _remove_stale_temps(urls: Iterable[str]) -> None:
    """After dispatch (no worker of the job writes any more): delete what atomic writes
    left when their worker was killed mid-publish (its retry published anew)."""
    for url in urls:
        for stale in storage.remove_stale_temps(url):
            log.info("removed %s, left by a killed writer", stale)


def run_encode(job: EncodeJob) -> EncodeReport:
    """Encode every shard of ``job.src`` not yet done; returns the job report."""
    t0, started_at = time.perf_counter(), now_iso()
    res = job.resources or Resources()
    # 1. Validate everything before any work
    _check_positive(batch_size=job.batch_size, max_retries=job.max_retries, limit=job.limit)
    check_resources(res)  # workers >= 1, 0 <= gpus_per_worker <= 1
    _check_positive(max_pixels=job.max_pixels, pixel_budget=job.pixel_budget)
    check_tile(job.tile)  # ValueError: 0 or a multiple of 64 pixels >= 128
    model_config, local_model = _check_model(job.model_dir)
    plan = RatePlan.build(model_config.rate_ladder(), job.rate, job.rates_file, job.target)
    shards = storage.expand_shards(job.src)
    names = unique_names(shards)
    rates = plan.resolve_all(shards)
    storage.check_writable(job.out)
    definitions = shard_definitions(job, model_sha256(local_model), rates)
    existing = set(storage.list_prefix(join(job.out, "")))  # one listing, not one per shard
    stats = {u: join(job.out, names[u] + STATS_SUFFIX) for u in shards}
    done = {u for u in shards if stats[u] in existing}
    if not job.overwrite:  # a done shard is skipped only if done as this job asks
        check_done_definitions({u: stats[u] for u in done}, definitions)
    # 2. The resolved job config, next to the outputs
    config = {
        "command": "encode-shards",
        "created_at": started_at,
        "codec_version": CODEC_VERSION,
        "src": job.src,
        "out": job.out,
        "model_dir": job.model_dir if "://" in job.model_dir else os.path.abspath(job.model_dir),
        "model_name": model_config.name,
        "rate_plan": plan.to_dict(),
        "shards": [{"url": u, "name": names[u], **chosen_dict(rates[u])} for u in shards],
        "settings": {
            "batch_size": job.batch_size,
            "max_retries": job.max_retries,
            "max_pixels": job.max_pixels,
            "precision": job.precision,
            "tile": job.tile,
            "pixel_budget": job.pixel_budget,
            **asdict(replace(res, address=_redact(res.address))),
        },
    }
    write_json(join(job.out, JOB_CONFIG), config)
    # 3. Skip done shards
    if job.overwrite:  # forget the done markers first: an interrupted redo stays pending
        for url in done:
            storage.delete(join(job.out, names[url] + STATS_SUFFIX))
        done = set()
    todo = [u for u in shards if u not in done]
    not_run = todo[job.limit :] if job.limit else []
    todo = todo[: job.limit] if job.limit else todo
    log.info(
        "%d shards: %d done before, %d to run",
        len(shards),
        len(shards) - len(todo) - len(not_run),
        len(todo),
    )
    tasks = [
        EncodeTask(
            shard=u,
            name=names[u],
            parquet_url=join(job.out, names[u] + ".parquet"),
            stats_url=stats[u],
            rate=rates[u] if isinstance(rates[u], Rate) else None,
            definition=definitions[u],
            target=None if isinstance(rates[u], Rate) else rates[u],
        )
        for u in todo
    ]
    # 4./5. Workers and dispatch
    results: list[ShardResult] = []
    failures: list[tuple[EncodeTask, str]] = []
    workers: list[dict[str, Any]] = []
    if tasks:
        results, failures, workers = _dispatch(job, tasks, "encode_shard", res)
        _remove_stale_temps(u for t in tasks for u in (t.parquet_url, t.stats_url))
    for task, error in failures:
        write_json(
            join(job.out, task.name + FAILED_SUFFIX),
            {"shard": task.shard, "attempts": task.attempt, "error": error, "at": now_iso()},
        )
    for r in results:
        if join(job.out, r.name + FAILED_SUFFIX) in existing:
            storage.delete(join(job.out, r.name + FAILED_SUFFIX))
    # 6. Report
    report = EncodeReport.finish(
        job.out,
        started_at,
        failures,
        workers,
        shards=EncodeShards(
            total=len(shards),
            done_before=len(shards) - len(tasks) - len(not_run),
            processed=len(results),
            failed=len(failures),
            not_run=len(not_run),
        ),
        summary=encode_summary(results, time.perf_counter() - t0),
        per_shard=[EncodeShardLine.of(r) for r in sorted(results, key=lambda r: r.name)],
    )
    targeted = [
        join(job.out, names[u] + ".parquet") for u in shards if not isinstance(rates[u], Rate)
    ]
    if targeted:  # over every done shard of the job, this run's and earlier ones
        report.targets = target_report([p for p in targeted if storage.exists(p)])
    write_job_report(job.out, report)
    return report


# --------------------------------------------------------------------------- decode


def run_decode(job: DecodeJob) -> DecodeReport:
    """Decode every Parquet of ``job.parquets`` into shards or files under ``job.out``."""
    t0, started_at = time.perf_counter(), now_iso()
    res = job.resources or Resources()
    # 1. Validate
    if job.format not in FORMATS:
        raise ValueError(f'Invalid format "{job.format}", should be one of {sorted(FORMATS)}')
    _check_positive(batch_size=job.batch_size, max_retries=job.max_retries)
    check_resources(res)  # workers >= 1, 0 <= gpus_per_worker <= 1
    _check_positive(max_pixels=job.max_pixels, pixel_budget=job.pixel_budget)
    check_tile(job.tile)  # ValueError: 0 or a multiple of 64 pixels >= 128
    _check_model(job.model_dir)
    urls = sorted({u for spec in job.parquets for u in storage.expand_shards(spec)})
    names = unique_names(urls)
    storage.check_writable(job.out)
    # 2. Work
    tasks = [
        DecodeTask(
            parquet=u,
            name=names[u],
            output=join(job.out, names[u] + ("" if job.as_files else ".tar")),
            format=job.format,
            as_files=job.as_files,
            errors_url=join(job.out, names[u] + ERRORS_SUFFIX),
        )
        for u in urls
    ]
    results, failures, workers = _dispatch(job, tasks, "decode_shard", res)
    _remove_stale_temps([t.errors_url for t in tasks] + [t.output for t in tasks if not t.as_files])
    # 3. Report
    report = DecodeReport.finish(
        job.out,
        started_at,
        failures,
        workers,
        shards=DecodeShards(total=len(tasks), processed=len(results), failed=len(failures)),
        summary=decode_summary(results, time.perf_counter() - t0),
        per_shard=[DecodeShardLine.of(r) for r in sorted(results, key=lambda r: r.name)],
        # the first rows of each kind; every one is in that Parquet's <name>.errors listing
        row_failures=[[r.name, k, why] for r in results for k, why in r.failures][:1000],
        row_notes=[
            [r.name, n.key, n.kind, n.reason]
            for r in results
            for n in r.notes
            if n.kind in (NOTE_FALLBACK, NOTE_RENAMED)
        ][:1000],
    )
    write_job_report(job.out, report, stem="decode_report")
    return report
