"""Image quality metrics for ``oscar eval``: functions of two uint8 (H, W, 3) sRGB arrays.

Each metric is ``fn(reference, distorted) -> float``; ``METRICS`` records its range and
direction, which the summary and the plots use. All of them run offline:

| name         | range           | better | package                              |
|--------------|-----------------|--------|--------------------------------------|
| psnr         | [0, 100] dB     | higher | numpy (identical images -> 100)      |
| ms-ssim      | [0, 1]          | higher | pytorch-msssim                       |
| ssimulacra2  | (-inf, 100]     | higher | ssimulacra2 (100 identical, 90 visually lossless, 50 medium, 30 low) |
| flip         | [0, 1]          | lower  | flip-evaluator (mean LDR-FLIP, 67 px/degree) |
| cvvdp        | (-inf, 10] JOD  | higher | cvvdp (optional, not in the extra)   |
| lpips        | [0, ~1]         | lower  | lpips, only with local weights       |

LPIPS (and DISTS) need network weights that come from the internet; here they are used
only when the user points at a local file (``--lpips-weights``). DISTS is not supported.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oscar_core.metrics import PSNR_CAP_DB, ms_ssim, psnr


@dataclass(frozen=True)
class MetricSpec:
    name: str
    column: str  # CSV column / JSON key (no dashes)
    higher_is_better: bool
    lo: float  # documented range, used by the tests
    hi: float
    package: str


METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec("psnr", "psnr", True, 0.0, PSNR_CAP_DB, "numpy"),
    "ms-ssim": MetricSpec("ms-ssim", "ms_ssim", True, 0.0, 1.0, "pytorch-msssim"),
    "ssimulacra2": MetricSpec("ssimulacra2", "ssimulacra2", True, -math.inf, 100.0, "ssimulacra2"),
    "flip": MetricSpec("flip", "flip", False, 0.0, 1.0, "flip-evaluator"),
    "cvvdp": MetricSpec("cvvdp", "cvvdp", True, -math.inf, 10.0, "cvvdp"),
    "lpips": MetricSpec("lpips", "lpips", False, 0.0, 2.0, "lpips"),
}
DEFAULT_METRICS = ("psnr", "ms-ssim", "ssimulacra2", "flip")

Metric = Callable[[np.ndarray, np.ndarray], float]


def _png(image: np.ndarray) -> io.BytesIO:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=0)
    buf.seek(0)
    return buf


def ssimulacra2(ref: np.ndarray, test: np.ndarray) -> float:
    """SSIMULACRA 2 (the ``ssimulacra2`` package, a port of libjxl's tool).

    100 = identical, ~90 visually lossless, ~70 high, ~50 medium, ~30 low quality; can go
    negative. The package's API reads files, so the arrays go in as in-memory PNGs.
    """
    from ssimulacra2 import compute_ssimulacra2

    return float(compute_ssimulacra2(_png(ref), _png(test)))


def flip(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean LDR-FLIP error (NVIDIA), 0 = identical, 1 = maximal; lower is better.

    Default viewing condition: 67 pixels per degree (a 0.7 m away 24" 4K monitor).
    """
    import flip_evaluator

    r = ref.astype(np.float32) / 255.0
    t = test.astype(np.float32) / 255.0
    _, mean_error, _ = flip_evaluator.evaluate(r, t, "LDR", applyMagma=False)
    return float(mean_error)


class Cvvdp:
    """ColorVideoVDP in JOD (10 = no visible difference), display ``standard_4k``, CPU.

    Optional: ``pip install cvvdp`` (it adds ImageIO, OpenEXR, ffmpeg-python; ~6 s import).
    """

    def __init__(self, display: str = "standard_4k"):
        import pycvvdp
        import torch

        self.model = pycvvdp.cvvdp(display_name=display, device=torch.device("cpu"))

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> float:
        quality, _ = self.model.predict(test, ref, dim_order="HWC")
        return float(quality)


# torchvision AlexNet ``features`` index -> LPIPS slice (see lpips.pretrained_networks.alexnet)
_ALEX_SLICES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


class Lpips:
    """LPIPS (AlexNet, v0.1), 0 = identical, lower is better; from LOCAL weights only.

    ``weights`` is either a torchvision AlexNet state dict (``alexnet-owt-7be5be79.pth`` from
    a torch hub cache: the linear heads then come from the ``lpips`` wheel, which ships
    them) or a full ``lpips.LPIPS(net="alex").state_dict()`` saved with ``torch.save``.
    Nothing is downloaded: the backbone is built empty and filled from the file.
    """

    def __init__(self, weights: str | Path):
        import lpips
        import torch

        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"LPIPS weights {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors of every kind: one clear message
            raise ValueError(f"LPIPS weights {path}: cannot load ({type(exc).__name__})") from None
        if not isinstance(state, dict):
            raise ValueError(f"LPIPS weights {path}: not a state dict")
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notice
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        if any(k.startswith("features.") for k in state):  # torchvision AlexNet
            state = {
                f"net.slice{_ALEX_SLICES[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
                for k, v in state.items()
                if k.startswith("features.") and int(k.split(".")[1]) in _ALEX_SLICES
            }
        backbone = {k for k in self.model.state_dict() if k.startswith("net.")}
        missing = sorted(backbone - set(state))
        if missing:
            raise ValueError(
                f"LPIPS weights {path}: not AlexNet or LPIPS-alex weights (missing {missing[:3]})"
            )
        self.model.load_state_dict(state, strict=False)
        self.model.eval()

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> float:
        import torch

        def tensor(a: np.ndarray) -> torch.Tensor:  # [0, 1], LPIPS rescales to [-1, 1]
            return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255

        with torch.inference_mode():
            return float(self.model(tensor(ref), tensor(test), normalize=True))


def build_metrics(names: list[str], lpips_weights: str | None = None) -> dict[str, Metric]:
    """name -> callable for each requested metric; ValueError naming what is missing and why."""
    out: dict[str, Metric] = {}
    for name in names:
        if name not in METRICS:
            raise ValueError(f'unknown metric "{name}", known: {", ".join(METRICS)}')
        try:
            if name == "lpips":
                if not lpips_weights:
                    raise ValueError("needs --lpips-weights (weights cannot be downloaded here)")
                out[name] = Lpips(lpips_weights)
            elif name == "cvvdp":
                out[name] = Cvvdp()
            else:
                fn = {"psnr": psnr, "ms-ssim": ms_ssim, "ssimulacra2": ssimulacra2, "flip": flip}
                out[name] = fn[name]
                _probe(out[name])
        except ImportError as exc:
            raise ValueError(
                f"metric {name}: {exc} (pip install {METRICS[name].package})"
            ) from None
    return out


def _probe(fn: Metric) -> None:
    """Run a metric once on a small pair, so a broken install fails before the job starts."""
    a = np.full((40, 40, 3), 120, np.uint8)
    b = a.copy()
    b[10:20] = 130
    fn(a, b)


# -- summaries over result rows (means per rate and variant, OSCAR vs one codec) ---------


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def msssim_db(value: float) -> float:
    """MS-SSIM in dB, -10 log10(1 - x): spreads the values near 1 where codecs differ."""
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


def best_row(rows: list[dict], columns: list[str]) -> dict | None:
    """The reached row with the best quality: by SSIMULACRA 2, else MS-SSIM, else PSNR.

    Picks one codec's best variant (full size, @1/2, @1/4) for an image at a rate point.
    """
    reached = [r for r in rows if r["reached"]]
    key = next((c for c in ("ssimulacra2", "ms_ssim", "psnr") if c in columns), None)
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
        out.append(summary)
    return out


def _compare(at_rate: list[dict], versus: str, columns: list[str]) -> dict:
    pairs = []
    for image in dict.fromkeys(r["image"] for r in at_rate):
        mine = [r for r in at_rate if r["image"] == image]
        oscar = next(r for r in mine if r["codec"] == "oscar")
        best = best_row([r for r in mine if r["codec"] == versus], columns)
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
    """summary.md: one table per rate (every variant), then OSCAR vs the compared codec."""
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
    versus = [s["versus"] for s in summary if "versus" in s]
    if versus:
        name = versus[0]["codec"].upper()
        lines += [f"## OSCAR vs {name} (best variant per image, paired means)", ""]
        lines += [
            "Delta = OSCAR minus " + name + ": positive SSIMULACRA 2 / MS-SSIM = OSCAR better.",
            "",
        ]
        head = ["rate", "images", f"{name} variants", "OSCAR bpp", f"{name} bpp"]
        if "ssimulacra2" in columns:
            head += ["SSIM2 OSCAR", f"SSIM2 {name}", "Δ SSIM2"]
        if "ms_ssim" in columns:
            head += ["MS-SSIM OSCAR", f"MS-SSIM {name}", "Δ MS-SSIM", "Δ MS-SSIM dB"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s, v in zip([s for s in summary if "versus" in s], versus, strict=True):
            c = v["codec"]
            used = ", ".join(f"{k}×{n}" for k, n in v["variants"].items()) or "cannot reach"
            cells = [str(s["rate"]), f"{v['n_compared']}/{v['n_images']}", used]
            cells += [_fmt(v["oscar_bpp"], 4), _fmt(v[f"{c}_bpp"], 4)]
            if "ssimulacra2" in columns:
                cells += [_fmt(v[f"{k}ssimulacra2"], 2) for k in ("oscar_", f"{c}_", "delta_")]
            if "ms_ssim" in columns:
                cells += [_fmt(v[f"{k}ms_ssim"], 4) for k in ("oscar_", f"{c}_", "delta_")]
                cells.append(_fmt(v["delta_ms_ssim_db"], 2))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
