"""Importing the published OSCAR: SD-2.1 + the reference checkpoint -> a model directory.

Inputs (github.com/jp-guo/OSCAR; layout read from its files, see the project notes):

- SD-2.1 (768-v) in diffusers layout in a local directory: ``vae/`` and ``unet/`` (config +
  weights) and ``scheduler/scheduler_config.json`` (the DDPM schedule: the x0 formula's
  abar_t comes from it).
- The reference's ``torch.save`` dict::

    hyper_encoders       ModuleList state, 8 rates in bpp order: {i}.backbone.*, {i}.proj.*,
                         {i}.quantizer.*
    embeddings           (77, 1024) learned prompt embedding
    rank_unet            LoRA rank (16)
    unet_lora_{encoder,decoder,others}_modules   module-name lists per adapter
    state_dict_unet      UNet keys holding "lora" or "conv_in" (peft naming, adapters
                         default_encoder / default_decoder / default_others)

Output: a self-contained model directory (``config.json`` + ``model.safetensors``): the VAE,
the UNet with the LoRA adapters merged into its weights (and the fully trained ``conv_in``),
the eight hyper-encoders, the embedding and the per-rate pmfs (uniform until fitted from
images: ``oscar fit-entropy``). ``config.json`` holds the architecture (read from the SD-2.1
configs), the schedule and the timesteps table, never a path; the model id hashes that
architecture and the weights, so a copy anywhere has the same id.

The hyper-encoder layout is recognised from the keys (``oscar_core.hyper.hyper_layout``):
the reference's HEAD layout (cb23f4e) loads key for key with its timesteps
``[500, 400, 310, 280, 210, 190, 170, 150]``; the older 5bb805c layout is refused by name
(its rates 0-1 never reached their nominal grid, so its weights cannot fill ours). Widths
(N, M, codebook dim, attention) are read from the tensor shapes. Nothing is loaded half-way:
a key with no place, a shape that differs or a weight the model needs that the checkpoint
lacks stops the import with the key and the shapes; only the VQ's training-time EMA
statistics (``cluster_size``, ``embed_avg``, ``initted``), which inference never reads, may
be absent, and the report lists them.

Pickle: the checkpoint is a pickle file and is only read when the caller passes
``allow_pickle=True`` (CLI: ``--allow-pickle``), and then with
``torch.load(weights_only=True)``, which refuses arbitrary objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import OscarConfig
from .denoiser import ADAPTERS
from .hyper import HEAD_LAYOUT, hyper_layout
from .ladder import REFERENCE_LADDER
from .model import OscarModel
from .sd21 import load_sd21_weights, sd21_config

HYPER_PREFIX = "hypers."
UNET_PREFIX = "denoiser.unet."
EMBEDDING_KEY = "denoiser.embedding"
# VQ buffers only training reads (EMA statistics): a checkpoint may lack them
TRAINING_ONLY = ("_codebook.cluster_size", "_codebook.embed_avg", "_codebook.initted")
# Timesteps per layout (the ladder's (ss, K) are the same in both)
LAYOUT_TIMESTEPS = {HEAD_LAYOUT: [t for _, _, t in REFERENCE_LADDER]}


@dataclass
class ImportReport:
    """What an import found and loaded (printed by ``oscar import-reference``)."""

    layout: str = ""
    tensors: dict[str, int] = field(default_factory=dict)  # group -> tensors loaded
    widths: dict[str, Any] = field(default_factory=dict)  # N, M, codebook_dim, attention
    timesteps: list[int] = field(default_factory=list)
    scaling_factor: float = 0.0
    schedule: dict[str, Any] = field(default_factory=dict)
    kept_at_init: list[str] = field(default_factory=list)  # training-only buffers absent
    ignored_config: list[str] = field(default_factory=list)  # SD config keys diffusers ignores
    merged: bool = False

    def lines(self) -> list[str]:
        total = sum(self.tensors.values())
        out = [
            f"layout: {self.layout}",
            f"tensors loaded: {total} ("
            + ", ".join(f"{k} {v}" for k, v in self.tensors.items())
            + ")",
            "hyper-encoders: " + ", ".join(f"{k}={v}" for k, v in self.widths.items()),
            f"timesteps: {self.timesteps}",
            f"VAE scaling factor: {self.scaling_factor}",
            "schedule: " + ", ".join(f"{k}={v}" for k, v in self.schedule.items()),
            f"LoRA: {'merged into the UNet weights' if self.merged else 'kept as adapters'}",
        ]
        if self.kept_at_init:
            out.append(
                f"not in the checkpoint, kept at init (training-only VQ statistics): "
                f"{len(self.kept_at_init)} buffers"
            )
        if self.ignored_config:
            out.append(f"SD-2.1 config keys diffusers ignores: {self.ignored_config}")
        return out


# -- the checkpoint --------------------------------------------------------------------------
def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read a reference checkpoint; pickle files need ``allow_pickle=True``."""
    path = Path(path)
    if not allow_pickle:
        raise PermissionError(
            f"{path}: reference checkpoints are pickle files; pass allow_pickle=True "
            "(CLI: --allow-pickle) to read it with torch.load(weights_only=True)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path}: not a loadable reference checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a reference OSCAR checkpoint (not a dict)")
    missing = {"hyper_encoders", "embeddings", "state_dict_unet"} - set(checkpoint)
    if missing:
        raise ValueError(f"{path}: not a reference OSCAR checkpoint, missing {sorted(missing)}")
    return checkpoint


def hyper_widths(hypers: dict[str, torch.Tensor]) -> dict[str, Any]:
    """N, M, codebook dim and attention of the reference's hyper-encoders, from shapes."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in hypers:
            raise ValueError(f'hyper-encoder key "{key}" missing from the checkpoint')
        return tuple(hypers[key].shape)

    N = shape("0.backbone.0.weight")[0]
    M = shape("0.backbone.13.weight")[0]
    project_in = "0.quantizer.project_in.weight"
    dim = shape(project_in)[0] if project_in in hypers else M
    attention = any(k.startswith("0.backbone.8.") for k in hypers)
    return {"N": N, "M": M, "codebook_dim": dim, "attention": attention}


def load_reference(
    checkpoint: dict, sd21_dir: str | Path | None = None, config: OscarConfig | None = None
) -> tuple[OscarModel, ImportReport]:
    """A model with SD-2.1's weights (from ``sd21_dir``; or ``config``'s random base, for
    tests) and the checkpoint's hyper-encoders, embedding, conv_in and LoRA adapters (not
    merged). Raises on anything that does not fit (see the module docstring)."""
    report = ImportReport()
    hypers = checkpoint["hyper_encoders"]
    layout = hyper_layout(hypers)
    if layout is None:
        raise ValueError("hyper_encoders: keys of no known hyper-encoder layout")
    if layout not in LAYOUT_TIMESTEPS:
        raise ValueError(
            f"hyper_encoders are in the {layout} layout, which this version does not load: "
            f"its two lowest rates stop at a 1/2 grid (one resampling slot), so their weights "
            f"have no place in the {HEAD_LAYOUT} layout; use a checkpoint of the reference's "
            f"HEAD (the published models, per the author's answer to its issue #3)"
        )
    report.layout = layout
    if config is None:
        if sd21_dir is None:
            raise ValueError("load_reference needs sd21_dir (or a config, for tests)")
        config = sd21_config(sd21_dir, report.ignored_config)
    else:
        config = OscarConfig.from_dict(config.to_dict())  # a copy: widths are set below
        config.denoiser.lora_rank = 0
    report.scaling_factor = config.autoencoder.scaling_factor
    report.schedule = config.denoiser.schedule_kwargs()
    widths = hyper_widths(hypers)
    for key, value in widths.items():
        setattr(config.hyper, key, value)
    report.widths = widths
    config.ladder = [[ss, K, t] for (ss, K, _), t in zip(REFERENCE_LADDER, LAYOUT_TIMESTEPS[layout], strict=True)]  # fmt: skip
    report.timesteps = LAYOUT_TIMESTEPS[layout]
    embedding = checkpoint["embeddings"]
    embedding = embedding.detach() if hasattr(embedding, "detach") else torch.as_tensor(embedding)
    if embedding.ndim != 2:
        raise ValueError(f"embeddings: shape {tuple(embedding.shape)}, expected (tokens, width)")
    config.denoiser.num_tokens = embedding.shape[0]
    if embedding.shape[1] != config.denoiser.cross_attention_dim:
        raise ValueError(
            f"embeddings: shape {tuple(embedding.shape)}, the UNet's cross-attention width is "
            f"{config.denoiser.cross_attention_dim}"
        )

    model = OscarModel(config)
    if sd21_dir is not None:
        report.tensors.update(load_sd21_weights(model, sd21_dir))
    rank = int(checkpoint.get("rank_unet", 16))
    groups = {a: list(checkpoint.get(f"unet_lora_{a.split('_')[1]}_modules", [])) for a in ADAPTERS}
    model.denoiser.add_lora(rank, groups if any(groups.values()) else None)

    ours = model.state_dict()
    incoming: dict[str, torch.Tensor] = {}
    for key, value in hypers.items():
        name = HYPER_PREFIX + key
        if name not in ours:
            raise ValueError(f'hyper-encoder key "{key}" has no place in the {layout} layout')
        incoming[name] = value
    incoming[EMBEDDING_KEY] = embedding
    unet_keys = checkpoint["state_dict_unet"]
    for key, value in unet_keys.items():
        if UNET_PREFIX + key not in ours:
            raise ValueError(f'UNet key "{key}" not found (LoRA targets or adapters differ)')
        incoming[UNET_PREFIX + key] = value
    for name, value in incoming.items():
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(
                f'"{name}": checkpoint shape {tuple(value.shape)} != model {tuple(ours[name].shape)}'
            )
        ours[name] = value.to(ours[name].dtype)
    needed = [
        k
        for k in ours
        if k not in incoming
        and (k.startswith(HYPER_PREFIX) or (k.startswith(UNET_PREFIX) and "lora_" in k))
    ]
    absent = [k for k in needed if not k.endswith(TRAINING_ONLY)]
    if absent:
        raise ValueError(
            f"checkpoint lacks {len(absent)} weights the model needs, e.g. {absent[:3]}"
        )
    report.kept_at_init = needed
    model.load_state_dict(ours)
    report.tensors["hyper-encoders"] = len(hypers)
    report.tensors["UNet LoRA + conv_in"] = len(unet_keys)
    report.tensors["embedding"] = 1
    return model.eval(), report


def import_reference(
    sd21_dir: str | Path,
    checkpoint_path: str | Path,
    out: str | Path,
    *,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[OscarModel, ImportReport]:
    """Read, load, merge the LoRA adapters into the UNet and write the model directory
    (weights cast to ``dtype``; the pmfs stay float32 and uniform until fitted)."""
    checkpoint = read_checkpoint(checkpoint_path, allow_pickle=allow_pickle)
    model, report = load_reference(checkpoint, sd21_dir)
    model.denoiser.merge_lora()
    report.merged = True
    digest = hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest()
    model.config.notes = {"imported": {"checkpoint_sha256": digest, "layout": report.layout}}
    model.save_pretrained(out, dtype=dtype)
    return model, report


def export_reference(model: OscarModel) -> dict:
    """The reference checkpoint dict of a model with LoRA adapters (tests, round trips)."""
    state = model.state_dict()
    hypers = {
        k[len(HYPER_PREFIX) :]: v.clone() for k, v in state.items() if k.startswith(HYPER_PREFIX)
    }
    unet = {
        k[len(UNET_PREFIX) :]: v.clone()
        for k, v in state.items()
        if k.startswith(UNET_PREFIX) and ("lora" in k or "conv_in" in k)
    }
    groups = model.denoiser.lora_groups
    return {
        "hyper_encoders": hypers,
        "embeddings": state[EMBEDDING_KEY].clone(),
        "rank_unet": model.config.denoiser.lora_rank,
        **{f"unet_lora_{a.split('_')[1]}_modules": groups.get(a, []) for a in ADAPTERS},
        "state_dict_unet": unet,
    }
