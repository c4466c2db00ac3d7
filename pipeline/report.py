"""What a job tells its user: per-shard stats JSON (the done marker) and the job reports.

A ``ShardResult`` (``contract.py``) is what ``ShardWorker.encode_shard`` returns and what is
written, last, as ``<name>.stats.json`` next to the shard's Parquet: its existence means the
shard is done. The job report of encode-shards / decode-shards sums the shard results, the
recompress report adds bytes before/after and quality; each is written as JSON for tools
and markdown for people, and recompress's per-shard table is also printed as plain text
(byte counts in decimal units).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

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


def target_report(parquets: list[str]) -> list[dict[str, Any]]:
    """One ``TargetSummary`` per quality target over the rows of ``parquets``: the rates
    chosen, how many met it, the trials, and the bytes against one rate for all images."""
    by_target: dict[str, list[Outcome]] = {}
    for url in parquets:
        for target, outcomes in target_outcomes(url).items():
            by_target.setdefault(target, []).extend(outcomes)
    return [TargetSummary.of(t, o).to_dict() for t, o in sorted(by_target.items())]


def decode_summary(results: list[DecodeResult], wall_seconds: float) -> dict[str, Any]:
    decoded = sum(r.decoded for r in results)
    return {
        "parquets": len(results),
        "rows": sum(r.rows for r in results),
        "images_decoded": decoded,
        "rows_skipped_error": sum(r.skipped_error_rows for r in results),
        "failures": sum(len(r.notes_of(NOTE_ERROR)) for r in results),
        "fallbacks": sum(len(r.notes_of(NOTE_FALLBACK)) for r in results),
        "renamed": sum(len(r.notes_of(NOTE_RENAMED)) for r in results),
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
    if report.get("targets"):
        lines += ["", "## Quality targets", ""]
        lines += _md_table(
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
        lines += _md_table(headers, [[p[h] for h in headers] for p in per])
    return "\n".join(lines) + "\n"


def _target_row(t: dict[str, Any]) -> list[Any]:
    single = t["single_rate"] or {}
    alone = f"rate {single.get('rate_index')}: {single.get('bytes')}" if single else "-"
    if single.get("estimated"):
        alone += f" ({single['estimated']} images estimated)"
    saved = "-" if t["saving"] is None else f"{100 * t['saving']:.1f}%"
    rates = ", ".join(f"{k}: {v}" for k, v in t["rates"].items())
    return [t["target"], t["images"], t["met"], rates, t["mean_trials"], t["bytes"], alone, saved]


def write_job_report(out: str, report: dict[str, Any], stem: str = "job_report") -> str:
    """Write ``<out>/<stem>.json`` and ``.md``; returns the JSON URL."""
    base = out.rstrip("/") + "/" + stem
    write_json(base + ".json", report)
    storage.atomic_put(base + ".md", report_markdown(report).encode())
    return base + ".json"


# ---------------------------------------------------------------- recompress report


def human_bytes(n: int | None) -> str:
    """1234567 -> "1.23 MB" (decimal units, 3 significant digits)."""
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


TABLE_HEADERS = [
    "shard",
    "rate",
    "images",
    "errors",
    "tar",
    "parquet",
    "images",
    "bitstreams",
    "ratio",
    "bpp",
    "PSNR dB",
    "MS-SSIM",
    "n",
]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per shard, then the total row (strings, ready to print)."""

    def row(name: str, r: dict[str, Any]) -> list[str]:
        return [
            name,
            str(r.get("rate", "")),
            str(r["images"]),
            str(r["errors"]),
            human_bytes(r["tar_bytes"]),
            human_bytes(r["parquet_bytes"]),
            human_bytes(r["image_bytes"]),
            human_bytes(r["bitstream_bytes"]),
            _num(r["ratio"], ".1f"),
            _num(r["bpp"], ".4f"),
            _num(r["psnr"], ".2f"),
            _num(r["ms_ssim"], ".4f"),
            str(r["quality_n"]),
        ]

    return [row(r["shard"], r) for r in report["per_shard"]] + [row("total", report["totals"])]


def format_table(report: dict[str, Any]) -> str:
    """The per-shard table as aligned plain text (what the command prints)."""
    rows = [TABLE_HEADERS, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADERS))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(lines)


def recompress_markdown(report: dict[str, Any]) -> str:
    """The recompress report for people: totals, the per-shard table, failures."""
    t = report["totals"]
    lines = ["# recompress report", "", f"- output: `{report['out']}`"]
    lines += [f"- finished {report['finished_at']}, {report['wall_seconds']} s"]
    lines += [
        f"- {t['shards']} shards, {t['images']} images ({t['errors']} errors): "
        f"{human_bytes(t['tar_bytes'])} of tars -> {human_bytes(t['parquet_bytes'])} of Parquet "
        f"(saved {human_bytes(t['saved_bytes'])}); image fields {human_bytes(t['image_bytes'])} -> "
        f"bitstreams {human_bytes(t['bitstream_bytes'])} (ratio {t['ratio']}), {t['bpp']} bpp"
    ]
    lines += [
        f"- quality on {t['quality_n']} sampled images ({report['quality_sample']} per shard, "
        f"spread evenly): PSNR {t['psnr']} dB, MS-SSIM {t['ms_ssim']}"
        + ("" if report["ms_ssim_available"] else " (pytorch_msssim not installed)"),
        "",
    ]
    lines += _md_table(TABLE_HEADERS, table_rows(report))
    if report["quality_failures"]:
        lines += ["", "## Quality samples that could not be compared", ""]
        lines += _md_table(["shard", "key", "why"], report["quality_failures"])
    if report["failed"]:
        lines += ["", "## Failed shards (not in the table)", ""]
        lines += [f"- {n} after {a} attempts: {e}" for n, a, e in report["failed"]]
    return "\n".join(lines) + "\n"
