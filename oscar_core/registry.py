"""Named model configurations, in one table.

- ``oscar-tiny``: small widths, runs on a 2-core CPU; what the tests, the demo and the shipped
  weights use. Same structure as the reference, narrower, no self-attention at 1/8.
- ``oscar-sd21``: the reference design: Stable Diffusion 2.1 (768-v) VAE and UNet, rank-16
  LoRA adapters on the UNet, N=192/M=320 hyper-encoders with attention. Base weights come
  from a local diffusers directory (``pretrained_dir``); with none given the components are
  built from these configs with random weights (used by the slow instantiation test).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from .config import AutoencoderConfig, DenoiserConfig, HyperConfig, OscarConfig

_REGISTRY: dict[str, Callable[[], OscarConfig]] = {}


def register_config(name: str):
    def wrap(fn: Callable[[], OscarConfig]) -> Callable[[], OscarConfig]:
        if name in _REGISTRY:
            raise ValueError(f'config "{name}" registered twice')
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_configs() -> list[str]:
    return sorted(_REGISTRY)


def get_config(name: str) -> OscarConfig:
    """A fresh copy of a named configuration."""
    if name not in _REGISTRY:
        raise ValueError(f'Unknown model config "{name}", should be one of {available_configs()}')
    return copy.deepcopy(_REGISTRY[name]())


@register_config("oscar-tiny")
def _oscar_tiny() -> OscarConfig:
    return OscarConfig(
        name="oscar-tiny",
        autoencoder=AutoencoderConfig(colour_skip=True),  # see oscar_core/autoencoder.py
        hyper=HyperConfig(),
        denoiser=DenoiserConfig(),
    )


@register_config("oscar-sd21")
def _oscar_sd21() -> OscarConfig:
    # Values of stabilityai/stable-diffusion-2-1 (vae/config.json, unet/config.json).
    return OscarConfig(
        name="oscar-sd21",
        autoencoder=AutoencoderConfig(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            mid_block_attention=True,
            scaling_factor=0.18215,
        ),
        hyper=HyperConfig(N=192, M=320, codebook_dim=32, attention=True),
        denoiser=DenoiserConfig(
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=(
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ),
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            upcast_attention=True,
            norm_num_groups=32,
            num_tokens=77,
            lora_rank=16,
        ),
    )
