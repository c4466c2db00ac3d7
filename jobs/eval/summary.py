"""Summaries of ``oscar eval``'s result rows: means per rate and variant, OSCAR paired with
one classic codec's best variant per image, and summary.md. A row is one image x codec
variant x rate (the CSV's columns: ``jobs.eval.job.write_csv``); metric columns are named
by ``jobs.eval.metrics.METRICS``.
"""

from __future__ import annotations

import math

import numpy as np

from jobs.eval.metrics import METRICS

RIVAL = "rival"  # "versus" every classic codec: per image, the best variant of any codec


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def msssim_db(value: float) -> float:
    """MS-SSIM in dB, -10 log10(1 - x): spreads the values near 1 where codecs differ."""
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


def quality_key(columns: list[str]) -> str | None:
    """The column variants are ranked by: SSIMULACRA 2, else MS-SSIM, else PSNR (all higher
    is better); None when none of them was measured."""
    return next((c for c in ("ssimulacra2", "ms_ssim", "psnr") if c in columns), None)


def best_row(rows: list[dict], columns: list[str]) -> dict | None:
    """The reached row with the best quality (``quality_key``): one codec's best variant
    (full size, @1/2, ...) for an image at a rate point, or the best rival of all codecs."""
    reached = [r for r in rows if r["reached"]]
    key = quality_key(columns)
    if not reached:
        return None
    return max(reached, key=lambda r: r[key] if key else r["bpp"])


def summarize(rows: list[dict], metric_names: list[str], versus: str | None) -> list[dict]:
    """Per rate: mean target/bpp/metrics/times per variant, and OSCAR vs ``versus``.

    Means of a variant are over the images where it reached the point (``n_reached``), so a
    variant that reached only on easy images is flattered: read ``n_reached`` beside it.
    The comparison pairs each image's OSCAR row with ``versus``'s best variant there.
    """
    columns = [METRICS[n].column for n in metric_names]
    out = []
    for rate in sorted({r["rate"] for r in rows}):
        at_rate = [r for r in rows if r["rate"] == rate]
        curves: dict[str, dict] = {}
        for label in dict.fromkeys(r["variant"] for r in at_rate):
            group = [r for r in at_rate if r["variant"] == label]
            reached = [r for r in group if r["reached"]]
            entry = {"codec": group[0]["codec"], "n": len(group), "n_reached": len(reached)}
            entry["target_bpp"] = _mean(r["target_bpp"] for r in group)
            entry["bpp"] = _mean(r["bpp"] for r in reached)
            if not reached:
                entry["lowest_bpp"] = _mean(r["bpp"] for r in group)
            for c in [*columns, "enc_ms", "dec_ms"]:
                entry[c] = _mean(r.get(c) for r in reached)
            curves[label] = entry
        summary = {"rate": rate, "nominal_bpp": at_rate[0]["nominal_bpp"], "curves": curves}
        if versus:
            summary["versus"] = _compare(at_rate, versus, columns)
        if any(r["codec"] != "oscar" for r in at_rate):
            summary["rival"] = _compare(at_rate, RIVAL, columns)
        out.append(summary)
    return out


def _compare(at_rate: list[dict], versus: str, columns: list[str]) -> dict:
    """OSCAR paired with ``versus``'s best variant per image (``RIVAL``: of every codec)."""
    pairs = []
    for image in dict.fromkeys(r["image"] for r in at_rate):
        mine = [r for r in at_rate if r["image"] == image]
        oscar = next(r for r in mine if r["codec"] == "oscar")
        theirs = [r for r in mine if r["codec"] != "oscar" and versus in (RIVAL, r["codec"])]
        best = best_row(theirs, columns)
        if best is not None:
            pairs.append((oscar, best))
    variants: dict[str, int] = {}
    for _, b in pairs:
        variants[b["variant"]] = variants.get(b["variant"], 0) + 1
    n_images = len({r["image"] for r in at_rate})
    res = {"codec": versus, "n_images": n_images, "n_compared": len(pairs)}
    res |= {"n_cannot_reach": n_images - len(pairs), "variants": variants}
    for c in ["bpp", *columns]:
        res[f"oscar_{c}"] = _mean(o[c] for o, _ in pairs)
        res[f"{versus}_{c}"] = _mean(b[c] for _, b in pairs)
        res[f"delta_{c}"] = _mean(o[c] - b[c] for o, b in pairs)  # OSCAR minus codec
    if "ms_ssim" in columns:
        res["delta_ms_ssim_db"] = _mean(
            msssim_db(o["ms_ssim"]) - msssim_db(b["ms_ssim"]) for o, b in pairs
        )
    return res


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summary_markdown(summary: list[dict], metric_names: list[str], header: list[str]) -> str:
    """summary.md: one table per rate (every variant), then OSCAR vs the compared codec and
    vs the best rival."""
    columns = [METRICS[n].column for n in metric_names]
    arrows = {METRICS[n].column: "↑" if METRICS[n].higher_is_better else "↓" for n in metric_names}
    lines = ["# OSCAR evaluation", "", *header, ""]
    for s in summary:
        lines += [f"## Rate {s['rate']} (nominal {s['nominal_bpp']:.4f} bpp)", ""]
        head = ["variant", "reached", "target bpp", "bpp", *[f"{c} {arrows[c]}" for c in columns]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, e in s["curves"].items():
            bpp = (
                _fmt(e["bpp"], 4)
                if e["n_reached"]
                else f"cannot reach ({_fmt(e['lowest_bpp'], 4)})"
            )
            cells = [label, f"{e['n_reached']}/{e['n']}", _fmt(e["target_bpp"], 4), bpp]
            lines.append("| " + " | ".join(cells + [_fmt(e[c]) for c in columns]) + " |")
        lines.append("")
    for field, title in (("versus", None), ("rival", "the best rival")):
        lines += _comparison_table([s for s in summary if field in s], field, columns, title)
    return "\n".join(lines) + "\n"


def _comparison_table(summary: list[dict], field: str, columns: list[str], title) -> list[str]:
    """Markdown lines: OSCAR vs ``summary[i][field]`` per rate (none if no rate has it)."""
    if not summary:
        return []
    name = title or summary[0][field]["codec"].upper()
    lines = [f"## OSCAR vs {name} (best variant per image, paired means)", ""]
    lines += [f"Delta = OSCAR minus {name}: positive SSIMULACRA 2 / MS-SSIM = OSCAR better."]
    if field == "rival":
        lines += ["The rival: per image, the best variant of every classic codec (any size)."]
    lines.append("")
    head = ["rate", "images", f"{name} variants", "OSCAR bpp", f"{name} bpp"]
    if "ssimulacra2" in columns:
        head += ["SSIM2 OSCAR", f"SSIM2 {name}", "Δ SSIM2"]
    if "ms_ssim" in columns:
        head += ["MS-SSIM OSCAR", f"MS-SSIM {name}", "Δ MS-SSIM", "Δ MS-SSIM dB"]
    if "psnr" in columns:
        head += ["PSNR OSCAR", f"PSNR {name}", "Δ PSNR"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        v = s[field]
        c = v["codec"]
        used = ", ".join(f"{k}×{n}" for k, n in v["variants"].items()) or "cannot reach"
        cells = [str(s["rate"]), f"{v['n_compared']}/{v['n_images']}", used]
        cells += [_fmt(v["oscar_bpp"], 4), _fmt(v[f"{c}_bpp"], 4)]
        if "ssimulacra2" in columns:
            cells += [_fmt(v[f"{k}ssimulacra2"], 2) for k in ("oscar_", f"{c}_", "delta_")]
        if "ms_ssim" in columns:
            cells += [_fmt(v[f"{k}ms_ssim"], 4) for k in ("oscar_", f"{c}_", "delta_")]
            cells.append(_fmt(v["delta_ms_ssim_db"], 2))
        if "psnr" in columns:
            cells += [_fmt(v[f"{k}psnr"], 2) for k in ("oscar_", f"{c}_", "delta_")]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]
