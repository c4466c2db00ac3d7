"""What a job tells its user: per-shard stats JSON (the done marker) and the job report.

``ShardResult`` is what ``ShardWorker.encode_shard`` returns and what is written, last, as
``<name>.stats.json`` next to the shard's Parquet: its existence means the shard is done.
``DecodeResult`` is the same for ``decode_shard``. The job report sums them (JSON for tools,
markdown for people).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import storage

STATS_SUFFIX = ".stats.json"
FAILED_SUFFIX = ".failed.json"
MAX_ERROR_KINDS = 20  # distinct error messages kept per shard (the rows hold them all)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class ShardResult:
    """One encoded shard. Sizes are bytes; times are seconds."""

    shard: str  # input URL
    name: str  # output name (file stem)
    parquet: str  # output URL
    rate_index: int
    nominal_bpp: float
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
    worker: dict[str, Any] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)  # message -> count
    finished_at: str = ""

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


@dataclass
class DecodeResult:
    """One decoded Parquet: how many rows became images, and which could not."""

    parquet: str
    name: str
    output: str  # a tar URL, or a directory URL for --as-files
    rows: int = 0
    decoded: int = 0
    skipped_error_rows: int = 0  # rows that were already errors at encode time
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    bytes_out: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    attempt: int = 1
    worker: dict[str, Any] = field(default_factory=dict)


def write_json(url: str, obj: Any) -> None:
    storage.atomic_put(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(url: str) -> Any:
    return json.loads(storage.read_bytes(url).decode("utf-8"))


def write_stats(url: str, result: ShardResult) -> None:
    """Publish a shard's stats: the done marker, so call it after the Parquet is in place."""
    storage.atomic_put(url, (result.to_json() + "\n").encode())


def read_stats(url: str) -> ShardResult:
    return ShardResult.from_dict(read_json(url))


# ------------------------------------------------------------------------ job report


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 3) if den else None


def encode_summary(results: list[ShardResult], wall_seconds: float) -> dict[str, Any]:
    """Totals over shard results; throughput counts every sample (ok or error) per second."""
    samples = sum(r.samples for r in results)
    src = sum(r.source_bytes for r in results)
    out = sum(r.bitstream_bytes for r in results)
    pixels = sum(r.pixels for r in results)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.error_kinds)
    return {
        "shards": len(results),
        "images": samples,
        "images_ok": sum(r.ok for r in results),
        "images_error": sum(r.errors for r in results),
        "source_bytes": src,
        "bitstream_bytes": out,
        "ratio": _rate(src, out),
        "mean_bpp": round(8 * out / pixels, 5) if pixels else None,
        "wall_seconds": round(wall_seconds, 3),
        "images_per_s": _rate(samples, wall_seconds),
        "model_images_per_s_per_worker": _rate(samples, sum(r.model_seconds for r in results)),
        # Ray nodes the shards ran on (node ids from the workers' describe(); 0 outside Ray)
        "nodes": len({r.worker.get("node_id") for r in results} - {None}),
        "error_kinds": dict(errors.most_common(MAX_ERROR_KINDS)),
    }


def decode_summary(results: list[DecodeResult], wall_seconds: float) -> dict[str, Any]:
    decoded = sum(r.decoded for r in results)
    return {
        "parquets": len(results),
        "rows": sum(r.rows for r in results),
        "images_decoded": decoded,
        "rows_skipped_error": sum(r.skipped_error_rows for r in results),
        "failures": sum(len(r.failures) for r in results),
        "bytes_out": sum(r.bytes_out for r in results),
        "wall_seconds": round(wall_seconds, 3),
        "images_per_s": _rate(decoded, wall_seconds),
    }


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """The job report for people: summary, failures, then one line per shard."""
    s = report["summary"]
    lines = [f"# {report['command']} report", "", f"- output: `{report['out']}`"]
    lines += [f"- started {report['started_at']}, finished {report['finished_at']}"]
    shards = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["shards"].items())
    lines += [f"- shards: {shards}", ""]
    lines += _md_table(["metric", "value"], [[k, v] for k, v in s.items() if k != "error_kinds"])
    if s.get("error_kinds"):
        lines += ["", "## Sample errors", ""]
        lines += _md_table(["reason", "count"], [[k, v] for k, v in s["error_kinds"].items()])
    if report.get("failed"):
        lines += ["", "## Failed shards (retried, then given up)", ""]
        lines += _md_table(["shard", "attempts", "error"], report["failed"])
    per = report.get("per_shard", [])
    if per:
        lines += ["", "## Per shard", ""]
        headers = list(per[0])
        lines += _md_table(headers, [[p[h] for h in headers] for p in per])
    return "\n".join(lines) + "\n"


def write_job_report(out: str, report: dict[str, Any], stem: str = "job_report") -> str:
    """Write ``<out>/<stem>.json`` and ``.md``; returns the JSON URL."""
    base = out.rstrip("/") + "/" + stem
    write_json(base + ".json", report)
    storage.atomic_put(base + ".md", report_markdown(report).encode())
    return base + ".json"
