"""Figures of ``oscar eval``: rd.png (rate-distortion curves per metric) and
contact_sheet.png (centre crops: original | OSCAR | a codec's best variant), drawn with
matplotlib's Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path

from jobs.eval.compare import EvalState
from jobs.eval.metrics import METRICS
from jobs.eval.summary import best_row

_COLORS = {"oscar": "black", "jpeg": "tab:blue", "webp": "tab:green", "avif": "tab:red"}
_COLORS |= {"jxl": "tab:purple", "heic": "tab:orange"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_rd(path: Path, summary: list[dict], names: list[str], n_images: int) -> None:
    """One subplot per metric: mean metric vs mean bpp (log x), a curve per codec/variant.

    A point is drawn only where the variant reached on EVERY image: a mean over a subset
    that changes from rate to rate (the easy images reach first) makes false zigzags.
    """
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    labels = list(dict.fromkeys(lab for s in summary for lab in s["curves"]))
    for ax, name in zip(axes.flat, names, strict=False):
        spec = METRICS[name]
        for label in labels:
            pts = sorted(
                (e["bpp"], e[spec.column])
                for s in summary
                if (e := s["curves"].get(label))
                and e["n_reached"] == n_images
                and math.isfinite(e[spec.column])
            )
            if not pts:
                continue
            codec, _, scale = label.partition("@")
            style = {"": "-", "1/2": "--", "1/4": ":", "1/8": "-."}.get(scale, (0, (1, 4)))
            look = {"lw": 3.0, "zorder": 10} if codec == "oscar" else {"lw": 1.3, "zorder": 2}
            name_ = label.upper() if codec == "oscar" else label
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, style, marker="o", ms=3, color=_COLORS.get(codec), label=name_, **look)
        ax.set_xscale("log")
        # plain labels at 1, 2, 5 x 10^k: matplotlib's minor "2x10^-3, 3x10^-3, ..." overlap
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"bpp (log); points: all {n_images} images reached")
        ax.set_title(f"{name} ({'higher' if spec.higher_is_better else 'lower'} is better)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(path: Path, state: EvalState, codec: str | None, columns: list[str]) -> None:
    """Center crops of the first images at two rates: original | OSCAR | codec's best variant.

    ``codec``: the classic codec shown. Rates: the lowest rate at which it (some variant) reached on every sheet image,
    else the lowest rate; and the highest rate evaluated.
    """
    plt = _pyplot()
    names = list(dict.fromkeys(k[0] for k in state.crops))
    rates = sorted({k[1] for k in state.crops})
    reached = [
        r
        for r in rates
        if codec
        and all(any(k[:2] == (n, r) and k[2] != "oscar" for k in state.crops) for n in names)
    ]
    shown = sorted({reached[0] if reached else rates[0], rates[-1]})
    panels = [(n, r) for n in names for r in shown]
    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for (name, rate), row_axes in zip(panels, axes, strict=True):
        oscar_crop, oscar_row = state.crops[(name, rate, "oscar")]
        cands = {k: v for k, v in state.crops.items() if k[:2] == (name, rate) and k[2] != "oscar"}
        best = best_row([v[1] for v in cands.values()], columns)
        other = next((v for v in cands.values() if v[1] is best), None)
        items = [
            (state.originals[name], f"{name} original"),
            (oscar_crop, _caption("OSCAR", oscar_row)),
        ]
        items.append(
            (other[0], _caption(best["variant"], best))
            if other
            else (None, f"{codec}: cannot reach")
        )
        for ax, (img, title) in zip(row_axes, items, strict=True):
            if img is None:
                ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=8)
            else:
                ax.imshow(img)
                ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _caption(label: str, row: dict) -> str:
    text = f"{label} r{row['rate']}: {row['bpp']:.4f} bpp"
    if "ssimulacra2" in row:
        text += f", SSIM2 {row['ssimulacra2']:.1f}"
    if "psnr" in row:
        text += f", {row['psnr']:.1f} dB"
    return text
