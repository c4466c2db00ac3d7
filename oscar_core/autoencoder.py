"""The latent autoencoder: the Stable Diffusion VAE's role in OSCAR.

    x (B,3,H,W) in [-1,1] --encode--> z0 (B,4,H/8,W/8) --decode--> x_hat (B,3,H,W) in [-1,1]

A diffusers ``AutoencoderKL`` built from the config; its weights come from the model file
(trained for ``oscar-tiny``, SD-2.1's VAE copied in by ``oscar import-reference``). The encoder is deterministic: z0 is
the posterior *mode* times the scaling factor (the reference samples the posterior, which
makes the same image give different bitstreams).

Colour skip (``colour_skip``, tiny model only): a linear path around the convolutional
encoder/decoder. The encoder adds ``skip_in(avgpool8(x))`` (3 -> 4 channels per 8x8 cell) to
the posterior mean; the decoder adds ``upsample8(skip_out(z))`` (4 -> 3, bilinear) to its
output. Both 1x1 convs start at zero (the model starts as the plain VAE). Why: the tiny VAE's
GroupNorms (2 channels per group at full resolution) normalise away each group's image-wide
mean, so a small network trained on 128-px crops learns the blue-yellow axis late and the
red-green axis later still (reds came out brown, greens grey). The skip carries each cell's
mean colour linearly, untouched by any norm.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor, nn

from .config import AutoencoderConfig

DOWNSCALE = 8  # pixels per latent cell, per side


def build_vae(config: AutoencoderConfig) -> AutoencoderKL:
    """An AutoencoderKL from the config (random weights: the model's file fills them)."""
    n_blocks = len(config.block_out_channels)
    if 2 ** (n_blocks - 1) != DOWNSCALE:
        raise ValueError(
            f"autoencoder needs 4 blocks (3 downsamples = 1/{DOWNSCALE}), got {n_blocks}"
        )
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_blocks,
        up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        scaling_factor=config.scaling_factor,
        mid_block_add_attention=config.mid_block_attention,
        **config.vae_extra,
    )


class LatentAutoencoder(nn.Module):
    """``encode(x) -> z0`` (posterior mode, scaled) and ``decode(z) -> x_hat`` (clamped)."""

    def __init__(self, config: AutoencoderConfig, empty_weights: bool = False):
        super().__init__()
        self.config = config
        # empty_weights: tensors on the meta device, filled by load_state_dict(assign=True)
        # (a model file's weights replace them anyway; random init of SD-2.1 costs seconds)
        with torch.device("meta") if empty_weights else contextlib.nullcontext():
            self.vae = build_vae(config)
        # the scaling factor lives in the config (refitted after stage-0 training)
        self.scaling_factor = float(config.scaling_factor)
        if config.colour_skip:
            self.enable_colour_skip()

    def enable_colour_skip(self) -> None:
        """Add the zero-initialised colour skip (the autoencoder's function is unchanged
        until it trains); used at construction and to extend a trained model without it."""
        c = self.config.latent_channels
        self.skip_in, self.skip_out = nn.Conv2d(3, c, 1), nn.Conv2d(c, 3, 1)
        for conv in (self.skip_in, self.skip_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.config.colour_skip = True

    def encode(self, x: Tensor) -> Tensor:
        """x: (B,3,H,W) in [-1,1], H and W multiples of 8 -> z0: (B,4,H/8,W/8)."""
        return self.encode_posterior(x).mode() * self.scaling_factor

    def encode_posterior(self, x: Tensor) -> DiagonalGaussianDistribution:
        """The diagonal Gaussian posterior over unscaled latents (training adds a KL term)."""
        posterior = self.vae.encode(x).latent_dist
        if not self.config.colour_skip:
            return posterior
        mean = posterior.mean + self.skip_in(F.avg_pool2d(x, DOWNSCALE))  # (B,4,H/8,W/8)
        return DiagonalGaussianDistribution(torch.cat([mean, posterior.logvar], dim=1))

    def decode(self, z: Tensor) -> Tensor:
        """z: (B,4,h,w) in the scaled latent space -> x_hat (B,3,8h,8w) clamped to [-1,1]."""
        return self.decode_unclamped(z).clamp(-1.0, 1.0)

    def decode_unclamped(self, z: Tensor) -> Tensor:
        """As ``decode`` without the clamp (training keeps the gradient outside [-1,1])."""
        return self.decode_unscaled(z / self.scaling_factor)

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """Unscaled latents (a posterior sample) (B,4,h,w) -> x_hat (B,3,8h,8w), unclamped."""
        x_hat = self.vae.decode(z).sample
        if self.config.colour_skip:
            colour = self.skip_out(z)  # (B,3,h,w): each cell's mean colour, linearly
            x_hat = x_hat + F.interpolate(colour, scale_factor=DOWNSCALE, mode="bilinear")
        return x_hat

    @torch.no_grad()
    def fit_scaling_factor(self, x: Tensor) -> float:
        """1/std of unscaled latents of a batch (how SD chose 0.18215); sets it in place."""
        z = self.encode_posterior(x).mode()
        self.scaling_factor = float(1.0 / z.flatten().std().clamp_min(1e-6))
        self.config.scaling_factor = self.scaling_factor
        return self.scaling_factor
