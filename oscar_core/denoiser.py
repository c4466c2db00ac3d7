"""The one shared one-step denoiser: (x_t, t_r) -> z0_hat.

    x_t (B,4,h,w), t_r (B,) --UNet(x_t, t_r, E)--> v (B,4,h,w)
    z0_hat = sqrt(abar_t) * x_t - sqrt(1 - abar_t) * v          (v-prediction, one step)

``E`` (num_tokens, cross_attention_dim) is a learned embedding that replaces the text
prompt (no text encoder). abar_t comes from the base model's DDPM schedule (diffusers
``DDPMScheduler``: scaled_linear betas 0.00085..0.012 over 1000 steps for SD-2.1).

With ``lora_rank > 0`` the base UNet is frozen and LoRA adapters are added the way the
reference does: three adapters (``default_encoder`` on down blocks + conv_in,
``default_decoder`` on up blocks + conv_out, ``default_others`` on the rest), so its
``state_dict_unet`` keys load unchanged; ``conv_in`` is trained in full.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from .config import DenoiserConfig

LORA_TARGETS = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in",
    "conv_shortcut", "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
)  # fmt: skip
ADAPTERS = ("default_encoder", "default_decoder", "default_others")


def lora_module_groups(unet: nn.Module) -> dict[str, list[str]]:
    """Module names per adapter, chosen like the reference (weights only, no norms)."""
    groups: dict[str, list[str]] = {name: [] for name in ADAPTERS}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not name.endswith(".weight"):
            continue
        if not any(pattern in name for pattern in LORA_TARGETS):
            continue
        module = name[: -len(".weight")]
        if "down_blocks" in name or "conv_in" in name:
            groups["default_encoder"].append(module)
        elif "up_blocks" in name or "conv_out" in name:
            groups["default_decoder"].append(module)
        else:
            groups["default_others"].append(module)
    return groups


class OneStepDenoiser(nn.Module):
    """UNet + learned embedding + the scheduler's x0 formula, evaluated at t_r."""

    def __init__(self, config: DenoiserConfig, empty_weights: bool = False):
        super().__init__()
        self.config = config
        if config.prediction_type not in {"v_prediction", "epsilon"}:
            raise ValueError(f'Invalid prediction_type "{config.prediction_type}"')
        # empty_weights: on the meta device, filled by load_state_dict(assign=True)
        with torch.device("meta") if empty_weights else contextlib.nullcontext():
            self.unet = UNet2DConditionModel(**config.unet_kwargs())
        self.embedding = nn.Parameter(
            torch.randn(config.num_tokens, config.cross_attention_dim) * 0.02
        )
        scheduler = DDPMScheduler(**config.schedule_kwargs())
        # (T,) float32; a buffer so it follows .to(device) but is not saved (derived)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float(), persistent=False)
        self.lora_groups: dict[str, list[str]] = {}
        if config.lora_rank > 0:
            self.add_lora(config.lora_rank)

    def add_lora(self, rank: int, groups: dict[str, list[str]] | None = None) -> None:
        """Freeze the UNet and add the reference's three rank-``rank`` adapters on the
        modules of ``groups`` (default: chosen like the reference); conv_in stays trainable
        in full. Also used after copying base weights into a plain UNet (the importer)."""
        from peft import LoraConfig

        self.config.lora_rank = rank
        self.unet.requires_grad_(False)
        self.lora_groups = groups or lora_module_groups(self.unet)
        for adapter, modules in self.lora_groups.items():
            if modules:
                cfg = LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=modules)
                self.unet.add_adapter(cfg, adapter_name=adapter)
        self.unet.set_adapter([a for a in ADAPTERS if self.lora_groups.get(a)])
        self.unet.conv_in.requires_grad_(True)

    def merge_lora(self) -> None:
        """Fold every adapter into its base weight (W + B A * alpha / r) and drop the
        adapters: a plain UNet, faster (no extra matmuls), same function up to float
        rounding (tested). ``lora_rank`` becomes 0: the merged model is saved as such."""
        if self.config.lora_rank == 0:
            return
        self.unet.fuse_lora(adapter_names=[a for a in ADAPTERS if self.lora_groups.get(a)])
        self.unet.unload_lora()
        self.lora_groups = {}
        self.config.lora_rank = 0

    def sqrt_alpha_bar(self, t: int) -> float:
        """sqrt(abar_t): the expected cosine of x_t and z0 at timestep t."""
        return float(self.alphas_cumprod[int(t)].sqrt())

    def forward(self, x_t: Tensor, t_r: Tensor) -> Tensor:
        """x_t (B,4,h,w), t_r (B,) int64 -> z0_hat (B,4,h,w). h, w even (UNet downsample)."""
        b = x_t.shape[0]
        tokens = self.embedding.to(x_t.dtype).unsqueeze(0).expand(b, -1, -1)
        out = self.unet(x_t, t_r, encoder_hidden_states=tokens).sample
        abar = self.alphas_cumprod[t_r].to(x_t.dtype)[:, None, None, None]
        if self.config.prediction_type == "v_prediction":
            return abar.sqrt() * x_t - (1 - abar).sqrt() * out
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt()

    @property
    def downscale(self) -> int:
        """Latent side must be a multiple of this (2 per UNet downsample)."""
        return 2 ** (len(self.config.block_out_channels) - 1)
