"""SD-2.1 in diffusers layout (a local directory) -> the ``oscar-sd21`` config and weights.

The directory holds ``vae/`` and ``unet/`` (config + weights) and
``scheduler/scheduler_config.json`` (the DDPM schedule: the one-step x0 formula's abar_t
comes from it). Used by the reference import (``oscar_core.reference``) and by training
from SD-2.1 (``jobs/train``). Nothing here keeps a path: the config describes the
architecture only.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .config import OscarConfig
from .model import OscarModel
from .registry import get_config

# Scheduler settings that would change the one-step x0 (we implement neither)
UNSUPPORTED_SCHEDULE = {"clip_sample": False, "thresholding": False, "trained_betas": None,
                        "rescale_betas_zero_snr": False}  # fmt: skip
# diffusers config keys our typed configs hold themselves (the rest goes to *_extra)
VAE_TYPED = {"block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
             "scaling_factor", "mid_block_add_attention", "down_block_types", "up_block_types",
             "in_channels", "out_channels"}  # fmt: skip
UNET_TYPED = {"block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
              "cross_attention_dim", "attention_head_dim", "use_linear_projection",
              "upcast_attention", "norm_num_groups", "in_channels", "out_channels",
              "sample_size"}  # fmt: skip


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"SD-2.1 directory: missing {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _extra(cls: type, data: dict[str, Any], typed: set[str], ignored: list[str]) -> dict:
    """Arguments of ``cls`` in a diffusers config that differ from ``cls``'s defaults and
    that our typed config does not hold (so the model builds the same module)."""
    params = inspect.signature(cls.__init__).parameters
    extra = {}
    for key, value in data.items():
        if key.startswith("_") or key in typed:
            continue
        if key not in params:
            ignored.append(key)
            continue
        default = params[key].default
        value = tuple(value) if isinstance(value, list) else value
        default = tuple(default) if isinstance(default, list) else default
        if value != default:
            extra[key] = list(value) if isinstance(value, tuple) else value
    return extra


def sd21_config(sd21_dir: str | Path, ignored: list[str] | None = None) -> OscarConfig:
    """The ``oscar-sd21`` config with the architecture, scaling factor and schedule of the
    SD-2.1 directory (no LoRA yet, no path). Raises naming the file and field that does not
    fit an OSCAR codec. Config keys diffusers itself ignores are appended to ``ignored``."""
    root = Path(sd21_dir)
    ignored = ignored if ignored is not None else []
    vae = _read_json(root / "vae" / "config.json")
    unet = _read_json(root / "unet" / "config.json")
    sched = _read_json(root / "scheduler" / "scheduler_config.json")
    config = get_config("oscar-sd21")
    config.denoiser.lora_rank = 0

    ae = config.autoencoder
    n = len(vae.get("block_out_channels", ()))
    for key, want in {"in_channels": 3, "out_channels": 3, "latent_channels": 4}.items():
        if vae.get(key, want) != want:
            raise ValueError(f"{root}/vae/config.json: {key} = {vae[key]}, OSCAR needs {want}")
    for key, want in {"down_block_types": ["DownEncoderBlock2D"] * n,
                      "up_block_types": ["UpDecoderBlock2D"] * n}.items():  # fmt: skip
        if list(vae.get(key, want)) != want:
            raise ValueError(f"{root}/vae/config.json: {key} = {vae[key]}, expected {want}")
    ae.block_out_channels = tuple(vae["block_out_channels"])
    ae.layers_per_block = int(vae.get("layers_per_block", ae.layers_per_block))
    ae.norm_num_groups = int(vae.get("norm_num_groups", ae.norm_num_groups))
    ae.scaling_factor = float(vae.get("scaling_factor", ae.scaling_factor))
    ae.mid_block_attention = bool(vae.get("mid_block_add_attention", True))
    ae.pretrained = True
    ae.vae_extra = _extra(AutoencoderKL, vae, VAE_TYPED, ignored)

    dn = config.denoiser
    for key in ("in_channels", "out_channels"):
        if unet.get(key, 4) != 4:
            raise ValueError(f"{root}/unet/config.json: {key} = {unet[key]}, OSCAR needs 4")
    for key in ("block_out_channels", "down_block_types", "up_block_types",
                "attention_head_dim"):  # fmt: skip
        if key in unet:
            value = unet[key]
            setattr(dn, key, tuple(value) if isinstance(value, list) else value)
    for key in ("layers_per_block", "cross_attention_dim", "norm_num_groups"):
        if key in unet:
            setattr(dn, key, int(unet[key]))
    for key in ("use_linear_projection", "upcast_attention"):
        if key in unet:
            setattr(dn, key, bool(unet[key]))
    dn.unet_extra = _extra(UNet2DConditionModel, unet, UNET_TYPED, ignored)

    for key, allowed in UNSUPPORTED_SCHEDULE.items():
        if sched.get(key, allowed) not in (allowed, None):
            raise ValueError(
                f"{root}/scheduler/scheduler_config.json: {key} = {sched[key]!r} is not "
                f"supported (the one-step x0 is the plain DDPM formula)"
            )
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                "prediction_type"):  # fmt: skip
        if key in sched:
            setattr(dn, key, type(getattr(dn, key))(sched[key]))
    if dn.prediction_type not in {"v_prediction", "epsilon"}:
        raise ValueError(f"{root}/scheduler: prediction_type {dn.prediction_type!r} unsupported")
    return config


def load_sd21_weights(model: OscarModel, sd21_dir: str | Path) -> dict[str, int]:
    """Copy SD-2.1's VAE and UNet weights into ``model`` (its UNet without adapters yet).
    Returns the tensor counts; a key or shape that differs raises naming it."""
    root = Path(sd21_dir)
    counts = {}
    for name, cls, target in (
        ("vae", AutoencoderKL, model.autoencoder.vae),
        ("unet", UNet2DConditionModel, model.denoiser.unet),
    ):
        try:
            source = cls.from_pretrained(root / name, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{root}/{name}: cannot load the weights: {exc}") from exc
        _copy_state(target, source.state_dict(), f"{root}/{name}")
        counts[f"{name} (SD-2.1)"] = len(source.state_dict())
        del source
    return counts


def _copy_state(target: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    ours = target.state_dict()
    for key, value in state.items():
        if key not in ours:
            raise ValueError(f'{where}: key "{key}" has no place in the model')
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ValueError(
                f'{where}: "{key}" has shape {tuple(value.shape)}, the model {tuple(ours[key].shape)}'
            )
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"{where}: {len(missing)} weights missing, e.g. {missing[:3]}")
    target.load_state_dict(state)
