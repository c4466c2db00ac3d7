"""What a job tells its user: per-shard stats JSON (the done marker) and the job reports.

A ``ShardResult`` (``contract.py``) is what ``ShardWorker.encode_shard`` returns and what is
written, last, as ``<name>.stats.json`` next to the shard's Parquet: its existence means the
shard is done. The job report of encode-shards / decode-shards (``EncodeReport`` /
``DecodeReport``: what ``run_encode`` / ``run_decode`` return) sums the shard results, the
recompress report adds bytes before/after and quality (``recompress_report.py``); each is
written as JSON for tools (``to_dict``: the dataclasses' fields are the JSON's keys, in
order) and markdown for people.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Self, TypeVar

from oscar_core.target import Outcome, TargetSummary

from . import storage
from .contract import (
    MAX_ERROR_KINDS,
    NOTE_ERROR,
    NOTE_FALLBACK,
    NOTE_RENAMED,
    DecodeNote,
    DecodeResult,
    ShardResult,
)
from .parquet import target_outcomes

STATS_SUFFIX = ".stats.json"
FAILED_SUFFIX = ".failed.json"
ERRORS_SUFFIX = ".errors"  # decode: the rows of one Parquet not written as asked


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json(url: str, obj: Any) -> None:
    storage.atomic_put(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(url: str) -> Any:
    return json.loads(storage.read_bytes(url).decode("utf-8"))


def write_stats(url: str, result: ShardResult) -> None:
    """Publish a shard's stats: the done marker, so call it after the Parquet is in place."""
    storage.atomic_put(url, (result.to_json() + "\n").encode())


def read_stats(url: str) -> ShardResult:
    return ShardResult.from_dict(read_json(url))


def write_notes(url: str, notes: list[DecodeNote]) -> None:
    """A decode's ``<name>.errors`` listing: one JSON object per line (``index_in_shard``,
    ``key``, ``kind``, ``reason``), in row order. With no notes there is no listing (one a
    previous run left is deleted, so a listing always describes the output beside it)."""
    if notes:
        storage.atomic_put(url, "".join(n.to_json() + "\n" for n in notes).encode())
    else:
        storage.delete(url)


def read_notes(url: str) -> list[DecodeNote]:
    """The listing ``write_notes`` wrote ([] when there is none)."""
    if not storage.exists(url):
        return []
    lines = storage.read_bytes(url).decode("utf-8").splitlines()
    return [DecodeNote(**json.loads(line)) for line in lines if line]


# ------------------------------------------------------------------------ job report


@dataclass
class EncodeSummary:
    """Totals over an encode's shard results (also ``oscar status``'s totals)."""

    shards: int
    images: int  # every sample, ok or error
    images_ok: int
    images_error: int
    source_bytes: int
    bitstream_bytes: int
    ratio: float | None  # source bytes / bitstream bytes
    mean_bpp: float | None
    wall_seconds: float
    images_per_s: float | None  # every sample (ok or error) per wall second
    model_images_per_s_per_worker: float | None
    nodes: int  # Ray nodes the shards ran on (node ids from describe(); 0 outside Ray)
    error_kinds: dict[str, int]  # the most common sample errors -> count


@dataclass
class DecodeSummary:
    """Totals over a decode's shard results."""

    parquets: int
    rows: int
    images_decoded: int
    rows_skipped_error: int  # error rows of encode: nothing to decode
    failures: int  # rows whose decode or write failed
    fallbacks: int  # images written as PNG where the format could not hold them
    renamed: int  # images renamed to spare a carried field
    bytes_out: int
    wall_seconds: float
    images_per_s: float | None


@dataclass
class EncodeShards:
    """What became of an encode job's shards."""

    total: int
    done_before: int  # done by an earlier run as this job asks: skipped
    processed: int
    failed: int  # failed every retry
    not_run: int  # pending beyond the job's ``limit``


@dataclass
class DecodeShards:
    """What became of a decode job's Parquets."""

    total: int
    processed: int
    failed: int


@dataclass
class EncodeShardLine:
    """One processed shard in the encode report."""

    shard: str
    rate: int | str  # the ladder index, or the quality target ("psnr>=30")
    images: int
    errors: int
    seconds: float
    images_per_s: float | None
    attempt: int
    worker: str  # "pid <pid> <device>"

    @classmethod
    def of(cls, r: ShardResult) -> EncodeShardLine:
        per_s = round(r.samples / r.seconds, 1) if r.seconds else None
        worker = f"pid {r.worker.get('pid')} {r.worker.get('device')}"
        seconds = round(r.seconds, 2)
        rate = r.rate_index if r.target is None else r.target
        return cls(r.name, rate, r.samples, r.errors, seconds, per_s, r.attempt, worker)


@dataclass
class DecodeShardLine:
    """One processed Parquet in the decode report."""

    parquet: str
    rows: int
    decoded: int
    failures: int
    fallbacks: int
    renamed: int
    seconds: float

    @classmethod
    def of(cls, r: DecodeResult) -> DecodeShardLine:
        fallbacks, renamed = len(r.notes_of(NOTE_FALLBACK)), len(r.notes_of(NOTE_RENAMED))
        failures, seconds = len(r.failures), round(r.seconds, 2)
        return cls(r.name, r.rows, r.decoded, failures, fallbacks, renamed, seconds)


Shards = TypeVar("Shards", EncodeShards, DecodeShards)
Summary = TypeVar("Summary", EncodeSummary, DecodeSummary)
Line = TypeVar("Line", EncodeShardLine, DecodeShardLine)


@dataclass(kw_only=True)
class JobReport(Generic[Shards, Summary, Line]):
    """What every shard job reports: where, when, what became of its shards, totals, a line
    per processed shard, the shards given up, the workers."""

    command: str
    out: str
    started_at: str
    finished_at: str
    shards: Shards
    summary: Summary
    per_shard: list[Line]  # in name order
    failed: list[list[Any]]  # [name, attempts, error] per shard that failed every retry
    workers: list[dict[str, Any]]  # each worker's ``ShardWorker.describe()``

    @classmethod
    def finish(
        cls,
        out: str,
        started_at: str,
        failures: list[tuple[Any, str]],
        workers: list[dict[str, Any]],
        **fields: Any,
    ) -> Self:
        """The report of a run that ends now; ``failures``: (task, error) per shard given up,
        ``fields``: the rest."""
        failed = [[t.name, t.attempt, e] for t, e in failures]
        return cls(
            out=out,
            started_at=started_at,
            finished_at=now_iso(),
            failed=failed,
            workers=workers,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``job_report.json``): the fields, nested dataclasses as dicts."""
        return asdict(self)


@dataclass(kw_only=True)
class EncodeReport(JobReport[EncodeShards, EncodeSummary, EncodeShardLine]):
    """``run_encode``'s report (``job_report.json`` / ``.md``)."""

    command: str = "encode-shards"
    # one per quality target, over every done shard of the job; empty at fixed rates (then
    # not in the JSON document either)
    targets: list[TargetSummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        document = super().to_dict()
        document.pop("targets")
        if self.targets:
            document["targets"] = [t.to_dict() for t in self.targets]
        return document


@dataclass(kw_only=True)
class DecodeReport(JobReport[DecodeShards, DecodeSummary, DecodeShardLine]):
    """``run_decode``'s report (``decode_report.json`` / ``.md``), with the rows not written
    as asked (the first 1000 of each kind; every one is in its Parquet's ``<name>.errors``)."""

    command: str = "decode-shards"
    row_failures: list[list[str]]  # [parquet, key, why]
    row_notes: list[list[str]]  # [parquet, key, kind, reason]: fallbacks and renames


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 3) if den else None


def encode_summary(results: list[ShardResult], wall_seconds: float) -> EncodeSummary:
    """Totals over shard results; throughput counts every sample (ok or error) per second."""
    samples = sum(r.samples for r in results)
    src = sum(r.source_bytes for r in results)
    out = sum(r.bitstream_bytes for r in results)
    pixels = sum(r.pixels for r in results)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.error_kinds)
    return EncodeSummary(
        shards=len(results),
        images=samples,
        images_ok=sum(r.ok for r in results),
        images_error=sum(r.errors for r in results),
        source_bytes=src,
        bitstream_bytes=out,
        ratio=_rate(src, out),
        mean_bpp=round(8 * out / pixels, 5) if pixels else None,
        wall_seconds=round(wall_seconds, 3),
        images_per_s=_rate(samples, wall_seconds),
        model_images_per_s_per_worker=_rate(samples, sum(r.model_seconds for r in results)),
        nodes=len({r.worker.get("node_id") for r in results} - {None}),
        error_kinds=dict(errors.most_common(MAX_ERROR_KINDS)),
    )


def target_report(parquets: list[str]) -> list[TargetSummary]:
    """One ``TargetSummary`` per quality target over the rows of ``parquets``: the rates
    chosen, how many met it, the trials, and the bytes against one rate for all images."""
    by_target: dict[str, list[Outcome]] = {}
    for url in parquets:
        for target, outcomes in target_outcomes(url).items():
            by_target.setdefault(target, []).extend(outcomes)
    return [TargetSummary.of(t, o) for t, o in sorted(by_target.items())]


def decode_summary(results: list[DecodeResult], wall_seconds: float) -> DecodeSummary:
    decoded = sum(r.decoded for r in results)
    return DecodeSummary(
        parquets=len(results),
        rows=sum(r.rows for r in results),
        images_decoded=decoded,
        rows_skipped_error=sum(r.skipped_error_rows for r in results),
        failures=sum(len(r.notes_of(NOTE_ERROR)) for r in results),
        fallbacks=sum(len(r.notes_of(NOTE_FALLBACK)) for r in results),
        renamed=sum(len(r.notes_of(NOTE_RENAMED)) for r in results),
        bytes_out=sum(r.bytes_out for r in results),
        wall_seconds=round(wall_seconds, 3),
        images_per_s=_rate(decoded, wall_seconds),
    )


def md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """The job report for people (from its JSON document): summary, failures, then one line
    per shard."""
    s = report["summary"]
    lines = [f"# {report['command']} report", "", f"- output: `{report['out']}`"]
    lines += [f"- started {report['started_at']}, finished {report['finished_at']}"]
    shards = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["shards"].items())
    lines += [f"- shards: {shards}", ""]
    lines += md_table(["metric", "value"], [[k, v] for k, v in s.items() if k != "error_kinds"])
    if s.get("error_kinds"):
        lines += ["", "## Sample errors", ""]
        lines += md_table(["reason", "count"], [[k, v] for k, v in s["error_kinds"].items()])
    if report.get("failed"):
        lines += ["", "## Failed shards (retried, then given up)", ""]
        lines += md_table(["shard", "attempts", "error"], report["failed"])
    if report.get("targets"):
        lines += ["", "## Quality targets", ""]
        lines += md_table(
            [
                "target",
                "images",
                "met",
                "rates chosen",
                "trials/image",
                "bytes",
                "one rate for all",
                "saved",
            ],
            [_target_row(t) for t in report["targets"]],
        )
    per = report.get("per_shard", [])
    if per:
        lines += ["", "## Per shard", ""]
        headers = list(per[0])
        lines += md_table(headers, [[p[h] for h in headers] for p in per])
    return "\n".join(lines) + "\n"


def _target_row(t: dict[str, Any]) -> list[Any]:
    single = t["single_rate"] or {}
    alone = f"rate {single.get('rate_index')}: {single.get('bytes')}" if single else "-"
    if single.get("estimated"):
        alone += f" ({single['estimated']} images estimated)"
    saved = "-" if t["saving"] is None else f"{100 * t['saving']:.1f}%"
    rates = ", ".join(f"{k}: {v}" for k, v in t["rates"].items())
    return [t["target"], t["images"], t["met"], rates, t["mean_trials"], t["bytes"], alone, saved]


def write_job_report(out: str, report: JobReport, stem: str = "job_report") -> str:
    """Write ``<out>/<stem>.json`` and ``.md``; returns the JSON URL."""
    base = out.rstrip("/") + "/" + stem
    document = report.to_dict()
    write_json(base + ".json", document)
    storage.atomic_put(base + ".md", report_markdown(document).encode())
    return base + ".json"
