"""Where the codec loses quality, stage by stage: an ablation per image and rate.

    oscar eval-stages IMAGES... [--model DIR] [--rates 0,3,7] [--json OUT.json]

For an image x (padded by reflection to the rate's multiple, scored on the original pixels):

    autoencoder  D(z0)                       z0 = E(x): the ceiling of every rate
    coarse       D(x_t)                      x_t = z~ with z0's channel RMS: the coded latent
                                             decoded directly, no denoiser
    codec        decompress(compress(x))     the product (z0_hat = denoiser(x_t, t_r))
    perfect      D(denoiser(z0, t_r))        the denoiser given a perfect z~ (z0 itself, its
                                             own norms): what it does to a latent that lost
                                             nothing

So ``autoencoder - coarse`` is what the hyper-encoder (the code) loses, ``codec - coarse``
what the one-step denoiser gains back, and ``autoencoder - perfect`` what the denoiser costs
when there is nothing to restore: a high rate whose ``perfect`` is far below the autoencoder
is limited by the denoiser, one whose ``coarse`` is, by the code. Also cos(x_t, z0) and
cos(z0_hat, z0) per position (``cosine_per_position``). ``coarse`` and ``perfect`` use the
exact RMS, the codec the header's 1/16-octave code of it: a difference of ~0.01 dB.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import torch

from jobs.eval.compare import load_reporting
from jobs.eval.job import resolve_rates
from oscar_core.hyper import channel_rms, cosine_per_position, match_norms
from oscar_core.images import crop, pad_reflect, padded_size, to_tensor, to_uint8
from oscar_core.metrics import psnr

STAGES = ("autoencoder", "coarse", "codec", "perfect")


@dataclass
class StagesConfig:
    """What ``oscar eval-stages`` measures."""

    images: list[str]  # image files or directories (their images, not recursive)
    model: str | None = None  # model directory (None: the shipped oscar-tiny)
    rates: str | None = None  # ladder indices or bpp, "0,3,7" (None: every rate)
    json_out: str | None = None  # also write the per-image rows and the means here


def stage_psnrs(codec, image: np.ndarray, rate_index: int) -> dict[str, float]:
    """One image (H, W, 3) uint8 at one rate -> PSNR of each of STAGES, and the cosines."""
    h, w = image.shape[:2]
    rate = codec.ladder[rate_index]
    ph, pw = padded_size(h, w, codec.model.pad_multiple(rate_index))
    x = pad_reflect(to_tensor([image]).to(codec.device), ph, pw)  # (1,3,ph,pw)

    def score(z: torch.Tensor) -> float:  # latent (1,4,ph/8,pw/8) -> PSNR on the original
        return psnr(image, to_uint8(crop(codec.latent_decode(z), h, w).cpu())[0])

    with torch.inference_mode():
        z0 = codec.latent_encode(x)  # (1,4,ph/8,pw/8)
        hyper = codec.model.hypers[rate_index]
        x_t = match_norms(hyper.decode_indices(hyper.encode_indices(z0)), channel_rms(z0))
        t_r = torch.full((1,), rate.t, dtype=torch.long, device=codec.device)
        z0_hat = codec.denoise(x_t, t_r)
        decoded = codec.decompress(codec.compress([image], rate_index))[0]
        return {
            "autoencoder": score(z0),
            "coarse": score(x_t),
            "codec": psnr(image, decoded),
            "perfect": score(codec.denoise(z0, t_r)),
            "cos_x_t": float(cosine_per_position(x_t, z0)),
            "cos_z0_hat": float(cosine_per_position(z0_hat, z0)),
        }


def run_stages(config: StagesConfig) -> int:
    """Every readable image at every rate asked; 2 when some input was bad (the others run)."""
    from oscar_core import Codec

    codec = Codec.from_pretrained(config.model, batch_size=1)
    rates = [r.index for r in resolve_rates(codec.ladder, config.rates)]
    samples, bad = load_reporting(config.images)
    if not samples:
        print("oscar: error: no readable images", file=sys.stderr)
        return 2
    rows = [
        {"image": s.name, "rate": r, **stage_psnrs(codec, s.image, r)}
        for s in samples
        for r in rates
    ]
    keys = [*STAGES, "cos_x_t", "cos_z0_hat"]
    means = {
        r: {k: float(np.mean([row[k] for row in rows if row["rate"] == r])) for k in keys}
        for r in rates
    }
    print(f"{len(samples)} images, model {codec.model_id.hex()[:8]}; PSNR dB per stage:")
    print("rate " + " ".join(f"{k:>11}" for k in keys))
    for r, m in means.items():
        print(f"{r:>4} " + " ".join(f"{m[k]:>11.3f}" for k in keys))
    if config.json_out:
        with open(config.json_out, "w") as f:
            json.dump({"model_id": codec.model_id.hex(), "mean": means, "rows": rows}, f, indent=2)
    return 2 if bad else 0
