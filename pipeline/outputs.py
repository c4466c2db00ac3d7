"""A job's output: its layout, the names in it, and when a shard in it is done.

    collect_status(out)     done / failed / pending shards of an encode output

A shard is done when its stats JSON exists (written last, after its Parquet) and records the
same ``ShardDefinition`` as the job that asks (``check_done_definitions``); the job runner
(``runner.py``) skips such shards and redoes the others.

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
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from oscar_core import CODEC_VERSION, Rate
from oscar_core.bitstream import VERSION as BITSTREAM_VERSION
from oscar_core.config import CONFIG_NAME, WEIGHTS_NAME

from . import storage
from .contract import EncodeJob, ShardDefinition
from .parquet import SCHEMA_VERSION
from .rates import Coding, shard_name
from .report import (
    FAILED_SUFFIX,
    STATS_SUFFIX,
    EncodeSummary,
    encode_summary,
    read_json,
    read_stats,
)

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


def shard_definitions(
    job: EncodeJob, model_digest: str, codings: dict[str, Coding]
) -> dict[str, ShardDefinition]:
    """shard URL -> what its output will depend on (``contract.ShardDefinition``)."""
    return {
        url: ShardDefinition(
            model_sha256=model_digest,
            codec_version=CODEC_VERSION,
            bitstream_version=BITSTREAM_VERSION,
            schema_version=SCHEMA_VERSION,
            rate_index=coding.index if isinstance(coding, Rate) else None,
            nominal_bpp=coding.nominal_bpp if isinstance(coding, Rate) else None,
            max_pixels=job.max_pixels,
            precision=job.precision,
            target=None if isinstance(coding, Rate) else str(coding),
            tile=job.tile,
        )
        for url, coding in codings.items()
    }


@dataclass
class OutputStatus:
    """The shards of an encode output by state (names), and totals over the done ones."""

    out: str
    shards: int  # in the job config
    done: list[str]
    failed: dict[str, str]  # name -> the error of its last attempt
    pending: list[str]
    totals: EncodeSummary

    def to_dict(self) -> dict[str, Any]:
        """What ``oscar status --json`` prints."""
        return asdict(self)


def collect_status(out: str) -> OutputStatus:
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
    return OutputStatus(
        out=out,
        shards=len(config["shards"]),
        done=done,
        failed={n: r.get("error", "") for n, r in zip(failed, reasons, strict=True)},
        pending=pending,
        totals=encode_summary(stats, sum(s.seconds for s in stats)),
    )
