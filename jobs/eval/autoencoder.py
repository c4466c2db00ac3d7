"""The latent autoencoder's own round trip: the quality ceiling of the whole codec.

    oscar eval-autoencoder IMAGES... [--model DIR] [--json OUT.json]

For each image x: x_hat = decode(encode(x)), no hyper-encoder, no bitstream, no denoiser.
Reports PSNR, the colour error of 8x8-cell means (mean |Cb, Cr| difference in 8-bit levels:
the cell is the latent's footprint) and the saturation ratio (mean |Cb, Cr| of x_hat over x's;
< 1 = washed out). Used to diagnose the colour failure of the first shipped model (see
docs/model-card.md); images whose sides are not multiples of 8 are cropped to them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from jobs.common.colour import chroma_l1, to_cbcr
from jobs.eval.compare import load_reporting
from oscar_core.metrics import psnr


@dataclass
class RoundTripConfig:
    """What ``oscar eval-autoencoder`` measures."""

    images: list[str]  # image files or directories (their images, not recursive)
    model: str | None = None  # model directory (None: the shipped oscar-tiny)
    json_out: str | None = None  # also write the per-image rows and the means here


def round_trip_metrics(ae, image: np.ndarray) -> dict[str, float]:
    """image (H, W, 3) uint8 -> {psnr, cell_chroma_error, saturation_ratio}."""
    h, w = image.shape[0] // 8 * 8, image.shape[1] // 8 * 8
    ref = image[:h, :w]
    x = torch.from_numpy(np.array(ref)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        x_hat = ae.decode(ae.encode(x))  # (1,3,H,W) in [-1,1]
    out = ((x_hat[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    cells = chroma_l1(F.avg_pool2d(x_hat, 8), F.avg_pool2d(x, 8))  # in [-1,1] units

    def chroma(t: torch.Tensor) -> float:
        return float(to_cbcr(t).abs().mean())

    return {
        "psnr": psnr(ref, out),
        "cell_chroma_error": float(cells) * 127.5,
        "saturation_ratio": chroma(x_hat) / max(chroma(x), 1e-8),
    }


def run_round_trip(config: RoundTripConfig) -> int:
    """Round-trip every readable image; 2 when some input was bad (the others still run)."""
    from oscar_core import Codec

    samples, bad = load_reporting(config.images)
    if not samples:
        print("oscar: error: no readable images", file=sys.stderr)
        return 2
    ae = Codec.from_pretrained(config.model).model.autoencoder
    rows = [{"image": s.name, **round_trip_metrics(ae, s.image)} for s in samples]
    keys = ("psnr", "cell_chroma_error", "saturation_ratio")
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(
        f"{len(rows)} images: PSNR {means['psnr']:.2f} dB, 8x8-cell Cb/Cr error "
        f"{means['cell_chroma_error']:.2f} levels, saturation ratio {means['saturation_ratio']:.3f}"
    )
    if config.json_out:
        with open(config.json_out, "w") as f:
            json.dump({"mean": means, "images": rows}, f, indent=2)
    return 2 if bad else 0
