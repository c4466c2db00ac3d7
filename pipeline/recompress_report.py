"""The recompress report for people: the per-shard table (bytes before/after, quality) as
aligned plain text (what ``oscar recompress`` prints) and as markdown
(``recompress_report.md``); byte counts in decimal units. The report itself is built by
``recompress.run_recompress``.
"""

from __future__ import annotations

from typing import Any

from .report import md_table


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
    lines += md_table(TABLE_HEADERS, table_rows(report))
    if report["quality_failures"]:
        lines += ["", "## Quality samples that could not be compared", ""]
        lines += md_table(["shard", "key", "why"], report["quality_failures"])
    if report["failed"]:
        lines += ["", "## Failed shards (not in the table)", ""]
        lines += [f"- {n} after {a} attempts: {e}" for n, a, e in report["failed"]]
    return "\n".join(lines) + "\n"
