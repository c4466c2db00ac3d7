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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jobs.common.lpips import Lpips
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

    Optional, installed by hand: ``pip install cvvdp`` (import name ``pycvvdp``; not a
    declared dependency: it adds ImageIO, OpenEXR, ffmpeg-python, ~6 s import).
    """

    def __init__(self, display: str = "standard_4k"):
        import pycvvdp
        import torch

        self.model = pycvvdp.cvvdp(display_name=display, device=torch.device("cpu"))

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> float:
        quality, _ = self.model.predict(test, ref, dim_order="HWC")
        return float(quality)


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
