"""Loading the reference OSCAR checkpoint layout into an ``oscar-sd21`` model.

The reference (github.com/jp-guo/OSCAR) saves a ``torch.save`` dict:

    hyper_encoders       ModuleList state: {i}.backbone.*, {i}.proj.*, {i}.quantizer.*
    embeddings           (77, 1024) learned prompt embedding
    rank_unet            LoRA rank (16)
    unet_lora_{encoder,decoder,others}_modules   module-name lists per adapter
    state_dict_unet      UNet keys holding "lora" or "conv_in" (peft naming, adapters
                         default_encoder / default_decoder / default_others)

Base weights (VAE, UNet) come from a local SD-2.1 diffusers directory (``<dir>/vae``,
``<dir>/unet``). Our module layout mirrors the reference, so keys map one to one with one
exception: the reference has a single stride-2 layer in the resampling slot (backbone.5,
proj.3) even for its two lowest rates (ss 8 and 16), where ours stacks 3 or 2 stages to
reach the nominal grid. That layer loads into our first stage; the rest stay as initialised
and are listed in the report (those two rates need fine-tuning after import).

Pickle: a ``.pkl``/``.pt`` file is only read when the caller passes ``allow_pickle=True``
(CLI: ``--allow-pickle``), and then with ``torch.load(weights_only=True)``, which refuses
arbitrary objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import OscarConfig
from .model import OscarModel
from .registry import get_config

HYPER_PREFIX = "hypers."
UNET_PREFIX = "denoiser.unet."
RESAMPLE_SLOTS = ("backbone.5.", "proj.3.")


@dataclass
class LoadReport:
    loaded: int = 0  # tensors copied from the checkpoint
    remapped: list[str] = field(default_factory=list)  # reference keys renamed to fit
    left_at_init: list[str] = field(default_factory=list)  # our keys the checkpoint lacks


def sd21_config(sd21_dir: str | Path | None) -> OscarConfig:
    """The ``oscar-sd21`` config, with base weights from a local diffusers SD-2.1 dir."""
    config = get_config("oscar-sd21")
    if sd21_dir is not None:
        root = Path(sd21_dir)
        for part in ("vae", "unet"):
            if not (root / part / "config.json").is_file():
                raise FileNotFoundError(f"SD-2.1 directory {root}: missing {part}/config.json")
        config.autoencoder.pretrained_dir = str(root / "vae")
        config.denoiser.pretrained_dir = str(root / "unet")
    return config


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read a reference checkpoint; pickle files need ``allow_pickle=True``."""
    path = Path(path)
    if not allow_pickle:
        raise PermissionError(
            f"{path}: reference checkpoints are pickle files; pass allow_pickle=True "
            "(CLI: --allow-pickle) to read it with torch.load(weights_only=True)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path}: not a loadable reference checkpoint: {exc}") from exc
    missing = {"hyper_encoders", "embeddings", "state_dict_unet"} - set(checkpoint)
    if missing:
        raise ValueError(f"{path}: not a reference OSCAR checkpoint, missing {sorted(missing)}")
    return checkpoint


def load_reference(
    checkpoint: dict, config: OscarConfig | None = None, sd21_dir: str | Path | None = None
) -> tuple[OscarModel, LoadReport]:
    """Build a model (``config`` or ``oscar-sd21`` from ``sd21_dir``) and copy the weights in."""
    config = config or sd21_config(sd21_dir)
    rank = int(checkpoint.get("rank_unet", config.denoiser.lora_rank))
    if rank != config.denoiser.lora_rank:
        raise ValueError(f"checkpoint LoRA rank {rank} != config rank {config.denoiser.lora_rank}")
    model = OscarModel(config)
    ours = model.state_dict()
    report = LoadReport()
    incoming: dict[str, torch.Tensor] = {}

    for key, value in checkpoint["hyper_encoders"].items():
        name = HYPER_PREFIX + key
        if name not in ours:
            name = _remap_resample(key, ours)
            if name is None:
                raise ValueError(f'hyper-encoder key "{key}" has no place in {config.name}')
            report.remapped.append(key)
        incoming[name] = value
    embedding = checkpoint["embeddings"]
    incoming["denoiser.embedding"] = (
        embedding.detach() if hasattr(embedding, "detach") else embedding
    )
    for key, value in checkpoint["state_dict_unet"].items():
        if UNET_PREFIX + key not in ours:
            raise ValueError(f'UNet key "{key}" not found (LoRA targets or adapters differ)')
        incoming[UNET_PREFIX + key] = value

    for name, value in incoming.items():
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(
                f'"{name}": checkpoint shape {tuple(value.shape)} != model {tuple(ours[name].shape)}'
            )
        ours[name] = value.to(ours[name].dtype)
    model.load_state_dict(ours)
    report.loaded = len(incoming)
    report.left_at_init = sorted(
        k for k in ours if k.startswith(HYPER_PREFIX) and k not in incoming
    )
    return model.eval(), report


def _remap_resample(key: str, ours: dict) -> str | None:
    """Reference ``{i}.backbone.5.weight`` -> our first stage ``hypers.{i}.backbone.5.0.weight``."""
    index, _, rest = key.partition(".")
    for slot in RESAMPLE_SLOTS:
        if rest.startswith(slot):
            name = f"{HYPER_PREFIX}{index}.{slot}0.{rest[len(slot) :]}"
            return name if name in ours else None
    return None


def export_reference(model: OscarModel) -> dict:
    """The reference checkpoint dict of a model (for tests and for round trips)."""
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
        "embeddings": state["denoiser.embedding"].clone(),
        "rank_unet": model.config.denoiser.lora_rank,
        "unet_lora_encoder_modules": groups.get("default_encoder", []),
        "unet_lora_decoder_modules": groups.get("default_decoder", []),
        "unet_lora_others_modules": groups.get("default_others", []),
        "state_dict_unet": unet,
    }
