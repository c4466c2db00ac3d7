"""The job driver: shards in, workers out, report back.

    run_encode(EncodeJob)   tar shards -> <out>/<name>.parquet + <name>.stats.json
    run_decode(DecodeJob)   Parquets   -> <out>/<name>.tar (or <out>/<name>/<key>.<ext>)
    collect_status(out)     done / failed / pending shards of an encode output

Steps of a run: 1. validate everything (model dir, rates, shard list, output names, that the
output is writable, that shards already done were done as this job asks: same
``ShardDefinition``, else exit 2 naming the difference unless ``overwrite``) before any
work; 2. write the resolved job config next to the outputs; 3. skip shards whose stats JSON
exists; 4. start ``ShardWorker`` actors on Ray (a local instance bound to 127.0.0.1 unless
an address is given); 5. hand out shards, retrying a failed one with exponential backoff and
replacing an actor that died; 6. write the report.

Output layout (``<out>`` is a local directory or an s3 prefix)::

    job_config.json          the resolved job (shards, rates, settings; no credentials)
    <name>.parquet           one row per sample (see parquet.py)
    <name>.stats.json        written last: the shard is done
    <name>.failed.json       the shard failed every retry (removed when it later succeeds)
    job_report.json / .md    the last run's report

and of a decode: ``<name>.tar`` (or ``<name>/<key>.<ext>``), ``<name>.errors`` (the rows
not written as asked, JSON lines; only when there are any), ``decode_report.json / .md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

from oscar_core import CODEC_VERSION, OscarConfig, OscarModel, Rate
from oscar_core.bitstream import VERSION as BITSTREAM_VERSION
from oscar_core.config import CONFIG_NAME, WEIGHTS_NAME

from . import storage
from .contract import (
    NOTE_FALLBACK,
    NOTE_RENAMED,
    DecodeJob,
    DecodeTask,
    EncodeJob,
    EncodeTask,
    Resources,
    ShardDefinition,
    ShardResult,
    WorkerConfig,
)
from .dispatch import check_resources, execute
from .parquet import SCHEMA_VERSION
from .rates import RatePlan, shard_name
from .report import (
    ERRORS_SUFFIX,
    FAILED_SUFFIX,
    STATS_SUFFIX,
    decode_summary,
    encode_summary,
    now_iso,
    read_json,
    read_stats,
    write_job_report,
    write_json,
)
from .sinks import FORMATS

log = logging.getLogger(__name__)

JOB_CONFIG = "job_config.json"
_SHARD_EXT = re.compile(r"\.(tar(\.(gz|bz2|xz|zst))?|tgz|parquet)$")


def join(out: str, name: str) -> str:
    return out.rstrip("/") + "/" + name


def output_name(url: str) -> str:
    """``s3://b/in/shard-000001.tar`` -> ``shard-000001`` (the stem of every output)."""
    return _SHARD_EXT.sub("", shard_name(url))


def unique_names(urls: list[str]) -> dict[str, str]:
    """url -> output name; ValueError when two inputs would write the same outputs."""
    names: dict[str, str] = {}
    for url in urls:
        name = output_name(url)
        if name in names.values():
            other = next(u for u, n in names.items() if n == name)
            raise ValueError(f"{url} and {other} would both write outputs named {name!r}")
        names[url] = name
    return names


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


def model_sha256(local_dir: str) -> str:
    """SHA-256 over a model directory's config.json and model.safetensors (name, size,
    bytes). Why not the model id: that needs the weights loaded (minutes and GBs for
    oscar-sd21, on the driver); hashing the files takes seconds and changes with them."""
    h = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        path = os.path.join(local_dir, name)
        h.update(f"{name}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def check_done_definitions(done: dict[str, str], asked: dict[str, ShardDefinition]) -> None:
    """ValueError (one line) when a done shard's stats JSON records another definition than
    the job asks for it. ``done``: shard URL -> its stats URL; ``asked``: shard URL -> def."""

    def recorded_definition(url: str) -> dict[str, Any] | None:
        try:
            return read_stats(done[url]).definition
        except ValueError as exc:  # not JSON, not an object of ours
            raise ValueError(f"{done[url]}: unreadable stats JSON: {exc}") from None

    urls = sorted(done)
    with ThreadPoolExecutor(16) as pool:  # small GETs: latency bound
        recorded = list(pool.map(recorded_definition, urls))
    differ = [
        (u, diff)
        for u, rec in zip(urls, recorded, strict=True)
        if (diff := asked[u].differences(rec))
    ]
    if differ:
        url, diff = differ[0]
        more = f" (and {len(differ) - 1} more done shards differ)" if len(differ) > 1 else ""
        raise ValueError(
            f"{done[url]}: shard {output_name(url)} was done with another definition: "
            f"{'; '.join(diff)}{more}; pass --overwrite to redo, or write to another --out"
        )


def _dispatch(job: EncodeJob | DecodeJob, tasks: list, method: str, res: Resources) -> tuple:
    """Run ``tasks`` on ShardWorker actors built from the job's settings: (results,
    failures, workers) as ``dispatch.execute`` returns them."""
    wconf = WorkerConfig(
        job.model_dir,
        batch_size=job.batch_size,
        max_pixels=job.max_pixels,
        precision=job.precision,
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


def shard_definitions(
    job: EncodeJob, model_digest: str, rates: dict[str, Rate]
) -> dict[str, ShardDefinition]:
    """shard URL -> what its output will depend on (``contract.ShardDefinition``)."""
    return {
        url: ShardDefinition(
            model_sha256=model_digest,
            codec_version=CODEC_VERSION,
            bitstream_version=BITSTREAM_VERSION,
            schema_version=SCHEMA_VERSION,
            rate_index=rate.index,
            nominal_bpp=rate.nominal_bpp,
            max_pixels=job.max_pixels,
            precision=job.precision,
        )
        for url, rate in rates.items()
    }


def run_encode(job: EncodeJob) -> dict[str, Any]:
    """Encode every shard of ``job.src`` not yet done; returns the job report."""
    t0, started_at = time.perf_counter(), now_iso()
    res = job.resources or Resources()
    # 1. Validate everything before any work
    _check_positive(batch_size=job.batch_size, max_retries=job.max_retries, limit=job.limit)
    check_resources(res)  # workers >= 1, 0 <= gpus_per_worker <= 1
    _check_positive(max_pixels=job.max_pixels)
    model_config, local_model = _check_model(job.model_dir)
    plan = RatePlan.build(model_config.rate_ladder(), job.rate, job.rates_file)
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
        "shards": [{"url": u, "name": names[u], "rate_index": rates[u].index} for u in shards],
        "settings": {
            "batch_size": job.batch_size,
            "max_retries": job.max_retries,
            "max_pixels": job.max_pixels,
            "precision": job.precision,
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
            rate=rates[u],
            definition=definitions[u],
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
    report = {
        "command": "encode-shards",
        "out": job.out,
        "started_at": started_at,
        "finished_at": now_iso(),
        "shards": {
            "total": len(shards),
            "done_before": len(shards) - len(tasks) - len(not_run),
            "processed": len(results),
            "failed": len(failures),
            "not_run": len(not_run),
        },
        "summary": encode_summary(results, time.perf_counter() - t0),
        "failed": [[t.name, t.attempt, e] for t, e in failures],
        "per_shard": [
            {
                "shard": r.name,
                "rate": r.rate_index,
                "images": r.samples,
                "errors": r.errors,
                "seconds": round(r.seconds, 2),
                "images_per_s": round(r.samples / r.seconds, 1) if r.seconds else None,
                "attempt": r.attempt,
                "worker": f"pid {r.worker.get('pid')} {r.worker.get('device')}",
            }
            for r in sorted(results, key=lambda r: r.name)
        ],
        "workers": workers,
    }
    write_job_report(job.out, report)
    return report


# --------------------------------------------------------------------------- decode


def run_decode(job: DecodeJob) -> dict[str, Any]:
    """Decode every Parquet of ``job.parquets`` into shards or files under ``job.out``."""
    t0, started_at = time.perf_counter(), now_iso()
    res = job.resources or Resources()
    # 1. Validate
    if job.format not in FORMATS:
        raise ValueError(f'Invalid format "{job.format}", should be one of {sorted(FORMATS)}')
    _check_positive(batch_size=job.batch_size, max_retries=job.max_retries)
    check_resources(res)  # workers >= 1, 0 <= gpus_per_worker <= 1
    _check_positive(max_pixels=job.max_pixels)
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
    report = {
        "command": "decode-shards",
        "out": job.out,
        "started_at": started_at,
        "finished_at": now_iso(),
        "shards": {"total": len(tasks), "processed": len(results), "failed": len(failures)},
        "summary": decode_summary(results, time.perf_counter() - t0),
        "failed": [[t.name, t.attempt, e] for t, e in failures],
        "per_shard": [
            {
                "parquet": r.name,
                "rows": r.rows,
                "decoded": r.decoded,
                "failures": len(r.failures),
                "fallbacks": len(r.notes_of(NOTE_FALLBACK)),
                "renamed": len(r.notes_of(NOTE_RENAMED)),
                "seconds": round(r.seconds, 2),
            }
            for r in sorted(results, key=lambda r: r.name)
        ],
        # the first rows of each kind; every one is in that Parquet's <name>.errors listing
        "row_failures": [[r.name, k, why] for r in results for k, why in r.failures][:1000],
        "row_notes": [
            [r.name, n.key, n.kind, n.reason]
            for r in results
            for n in r.notes
            if n.kind in (NOTE_FALLBACK, NOTE_RENAMED)
        ][:1000],
        "workers": workers,
    }
    write_job_report(job.out, report, stem="decode_report")
    return report


# --------------------------------------------------------------------------- status


def collect_status(out: str) -> dict[str, Any]:
    """Done / failed / pending shards of an encode output, with totals of the done ones."""
    config_url = join(out, JOB_CONFIG)
    if not storage.exists(config_url):
        raise ValueError(f"{out}: no {JOB_CONFIG} (not an encode-shards output?)")
    config = read_json(config_url)
    listing = set(storage.list_prefix(join(out, "")))
    done, failed, pending = [], [], []
    for shard in config["shards"]:
        name = shard["name"]
        if join(out, name + STATS_SUFFIX) in listing:
            done.append(name)
        elif join(out, name + FAILED_SUFFIX) in listing:
            failed.append(name)
        else:
            pending.append(name)
    with ThreadPoolExecutor(16) as pool:  # small GETs: latency bound
        stats = list(pool.map(lambda n: read_stats(join(out, n + STATS_SUFFIX)), done))
        reasons = list(pool.map(lambda n: read_json(join(out, n + FAILED_SUFFIX)), failed))
    return {
        "out": out,
        "shards": len(config["shards"]),
        "done": done,
        "failed": {n: r.get("error", "") for n, r in zip(failed, reasons, strict=True)},
        "pending": pending,
        "totals": encode_summary(stats, sum(s.seconds for s in stats)),
    }
