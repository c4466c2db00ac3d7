"""Typed configuration of every component of an OSCAR model (saved as ``config.json``).

One dataclass per component, each field commented; ``OscarConfig`` nests them and is what
``Codec.from_pretrained`` reads next to the weights. Tuples become JSON lists and back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .ladder import REFERENCE_LADDER, RateLadder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class AutoencoderConfig:
    """The latent autoencoder (the SD VAE's role): RGB (B,3,H,W) <-> z0 (B,4,H/8,W/8)."""

    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)  # 4 blocks = 3 downsamples = 1/8
    layers_per_block: int = 1  # resnet blocks per encoder block (decoder has one more)
    latent_channels: int = 4  # channels of z0
    norm_num_groups: int = 8  # GroupNorm groups (must divide every width)
    mid_block_attention: bool = False  # SD has self-attention at 1/8; too slow for CPU tiny
    colour_skip: bool = False  # linear per-cell colour path around the VAE (autoencoder.py)
    scaling_factor: float = 1.0  # z0 = mode(q(z|x)) * scaling_factor (unit-variance latents)
    # True: the weights are a pretrained VAE's (SD-2.1): training keeps it frozen (no stage 0)
    pretrained: bool = False
    # further diffusers AutoencoderKL arguments where the base differs from diffusers'
    # defaults (read from <sd21>/vae/config.json by the importer); never a path
    vae_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HyperConfig:
    """Per-rate hyper-encoder + VQ + projection (reference HEAD layout, widths configurable)."""

    N: int = 64  # backbone width (reference: 192)
    M: int = 64  # width at the quantiser input and in the projection network (reference: 320)
    codebook_dim: int = 32  # VQ works on this dimension (project_in M -> codebook_dim)
    attention: bool = False  # compressai AttentionBlock in slots 8 and 14 (reference: yes)


@dataclass
class DenoiserConfig:
    """The one shared one-step denoiser: diffusers UNet2DConditionModel + learned embedding."""

    block_out_channels: tuple[int, ...] = (64, 128)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    cross_attention_dim: int = 64  # width of the learned embedding tokens (SD-2.1: 1024)
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 16
    num_tokens: int = 4  # tokens of the learned embedding in place of text (SD: 77)
    lora_rank: int = 0  # >0: frozen base UNet + LoRA adapters of this rank (reference: 16)
    # further diffusers UNet2DConditionModel arguments where the base differs from diffusers'
    # defaults (read from <sd21>/unet/config.json by the importer); never a path
    unet_extra: dict[str, Any] = field(default_factory=dict)
    # DDPM schedule of the base model (SD-2.1 768-v: scaled_linear, v-prediction; the
    # importer reads it from <sd21>/scheduler/scheduler_config.json)
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"

    def schedule_kwargs(self) -> dict[str, Any]:
        """Arguments for a diffusers scheduler with the base model's DDPM schedule."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
        }

    def unet_kwargs(self) -> dict[str, Any]:
        """Arguments for ``UNet2DConditionModel(**kwargs)`` (4 -> 4 channels)."""
        head = self.attention_head_dim
        return {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": tuple(self.block_out_channels),
            "down_block_types": tuple(self.down_block_types),
            "up_block_types": tuple(self.up_block_types),
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": tuple(head) if isinstance(head, list | tuple) else head,
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
            "norm_num_groups": self.norm_num_groups,
            **self.unet_extra,
        }


@dataclass
class OscarConfig:
    """A whole OSCAR model: latent autoencoder, per-rate hyper-encoders, one denoiser."""

    name: str = "oscar-tiny"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    hyper: HyperConfig = field(default_factory=HyperConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    # one (ss, K, t_r) triple per rate; t_r is refitted after stage-1 training
    ladder: list[list[int]] = field(default_factory=lambda: [list(r) for r in REFERENCE_LADDER])
    # free-form facts about how the weights were made (training steps, data, metrics)
    notes: dict[str, Any] = field(default_factory=dict)

    def rate_ladder(self) -> RateLadder:
        return RateLadder(self.ladder)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def architecture_json(self) -> str:
        """The config without ``name`` and ``notes``: what the model id hashes (with the
        weights), so renaming a model or editing its notes never changes its id."""
        data = {k: v for k, v in self.to_dict().items() if k not in {"name", "notes"}}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OscarConfig:
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        parts = {
            "autoencoder": AutoencoderConfig,
            "hyper": HyperConfig,
            "denoiser": DenoiserConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in parts:
                kwargs[key] = _build(parts[key], value)
            elif key in {"name", "ladder", "notes"}:
                kwargs[key] = value
            else:
                raise ValueError(f'unknown model config field "{key}"')
        config = cls(**kwargs)
        config.rate_ladder()  # validates the ladder
        return config

    @classmethod
    def from_json(cls, text: str) -> OscarConfig:
        return cls.from_dict(json.loads(text))


def _build(kind: type, values: dict[str, Any]):
    """Instantiate a component dataclass from JSON, turning lists back into tuples."""
    if not isinstance(values, dict):
        raise ValueError(f"{kind.__name__} must be a JSON object")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    if "pretrained_dir" in values:
        raise ValueError(
            f"{kind.__name__}.pretrained_dir: model directories are self-contained now (no "
            "machine paths); re-import the reference with `oscar import-reference`"
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**fixed)
