"""Typed configuration of ``oscar train`` (see ``trainer.py`` for the stage plan).

A JSON file (``jobs/train/configs/*.json``) holds a ``TrainConfig``; CLI flags override its
fields. Unknown fields are an error, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageConfig:
    steps: int  # optimiser steps
    batch: int  # images (or latents) per step
    crop: int  # square crop side in pixels (multiple of 64)
    lr: float  # AdamW peak learning rate (cosine decay to 5%, 2% warm-up)
    max_minutes: float | None = None  # stop (checkpointed) after this long; re-run resumes


@dataclass
class TrainConfig:
    # A directory of images or .tar shards, or WebDataset shards: a brace range, a glob, a
    # .txt list or an s3:// prefix (s3://bucket/train/shard-{000..009}.tar, /data/*.tar).
    data: str = "../shared/data/train"
    out: str = "runs/oscar-tiny"  # run directory: ckpt/, model/, train.log, summary.json
    base: str = "oscar-tiny"  # registry name, or a model directory to start from
    # base "oscar-sd21": the SD-2.1 diffusers directory (vae/, unet/, scheduler/) whose
    # weights, architecture and DDPM schedule the model starts from (frozen VAE, no stage 0)
    sd21_dir: str | None = None
    lora_rank: int = 16  # LoRA rank on the SD-2.1 UNet (the reference's)
    # override HyperConfig fields of a registry base (e.g. {"N": 16, "M": 24} in tests)
    hyper: dict | None = None
    # bf16 autocast of the training forward on CUDA (the reference's mixed precision);
    # CPU training stays fp32
    cuda_bf16: bool = True
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch default)
    holdout_every: int = 20  # every n-th image is held out
    cache_crops: int = 1536  # crops whose latents are cached for stages 1 and 2
    fit_crops: int = 128  # held-out crops for the t_r fit and the histograms
    stage0: StageConfig = field(default_factory=lambda: StageConfig(3000, 8, 128, 1e-3))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(1500, 16, 256, 1e-3))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(1500, 4, 128, 2e-4))
    # Stage 1: weight of the relative squared error of x_t = match_norms(z~, rms(z0)) to z0,
    # beside -cos per position. Why: the cosine ignores each position's magnitude, and the
    # decoder sees x_t, magnitudes included (a long cos-only stage 1 raised cos(x_t, z0) and
    # lowered the PSNR of x_t decoded: model card, issue 17). 0: cos only (runs 1-5).
    stage1_mse_weight: float = 0.0
    # Stage 2 trains the hyper-encoders too (the reference's joint stage); False: only the
    # denoiser and its embedding learn, the hyper-encoders, their pmfs (no refit) and t_r stay
    # the base's, so its bitstreams, bytes and context model stay valid (give fit_timesteps
    # False and stage1.steps 0 too).
    stage2_hypers: bool = True
    fit_timesteps: bool = True  # False: keep the base model's t_r table (a decoder-only run)
    # stage 3 (optional, steps 0 = skipped): the latent decoder alone, on the codec's z0_hat
    stage3: StageConfig = field(default_factory=lambda: StageConfig(0, 4, 128, 1e-4))
    # Stage 0 colour: weight of the Cb/Cr L1 term, and whether to add the autoencoder's
    # linear colour skip (oscar_core/autoencoder.py) to a base model that lacks it.
    chroma_weight: float = 10.0
    colour_skip: bool = False
    colour_skip_lr_scale: float = 20.0  # the skip's learning rate / stage 0's
    save_dtype: str = "float16"  # dtype of the shipped weights
    # Refinement of a trained model (base = its directory): stage 1 trains only these
    # hyper-encoders (None: all); stage0.steps = 0 skips stage 0 and keeps the latent scale.
    rates: list[int] | None = None
    # Codebook diversity: weight of (1 - normalised entropy of the soft code assignment) for
    # the rates listed (None: all), in stages 1 and 2. Counters dead codes in small codebooks.
    diversity: float = 0.0
    diversity_rates: list[int] | None = None
    # per-rate weight, e.g. {"7": 0.2}; negative = entropy penalty (e.g. {"0": -0.5}: a rate
    # whose fixed header would otherwise push it over its nominal bpp)
    diversity_weights: dict[str, float] | None = None
    diversity_temperature: float = 0.1
    # Stage-2 perceptual loss: LPIPS (AlexNet) from LOCAL weights (nothing is downloaded;
    # see ``jobs.common.lpips.Lpips`` for the accepted files); None: SSIM only.
    lpips_weights: str | None = None
    lpips_weight: float = 1.0
    # Wall-clock budget of the whole run in minutes (``budget.py``; CLI ``--minutes N``):
    # each stage with steps > 0 runs for its share of the time left, its learning rate on
    # the clock; None: every stage runs its ``steps``.
    minutes: float | None = None
    budget_shares: dict[str, float] = field(
        default_factory=lambda: {"stage0": 0.3, "stage1": 0.2, "stage2": 0.5, "stage3": 0.15}
    )

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> TrainConfig:
        data = json.loads(Path(path).read_text()) if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("stage0", "stage1", "stage2", "stage3"):
            if name in data and isinstance(data[name], dict):
                data[name] = StageConfig(**data[name])
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config fields: {sorted(unknown)}")
        return cls(**data)
