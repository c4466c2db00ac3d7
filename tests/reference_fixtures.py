"""A small SD-2.1-shaped base and a checkpoint saved the way the reference OSCAR saves one.

Everything here is re-stated from the project notes (shared OSCAR_NOTES.md), independently of
``oscar_core``: the hyper-encoder's slot table, the peft adapters, the checkpoint dict and the
reference forward. Tests import a checkpoint built here through ``oscar import-reference``
and compare the codec with ``reference_forward``.

Sizes: VAE 8-16 channels, UNet (32, 64) with cross-attention width 1024 and a 77-token
embedding (as SD-2.1), hyper-encoders N=16, M=24 with attention; all 8 rates.
"""

from __future__ import annotations

from pathlib import Path

import torch
from compressai.layers import AttentionBlock, conv3x3
from compressai.models.utils import conv, deconv
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn
from vector_quantize_pytorch import VectorQuantize

# (ss, K, t) of the reference ladder at HEAD, in bpp order
REFERENCE_RATES = [(8, 256, 500), (16, 1024, 400), (32, 256, 310), (32, 2048, 280),
                   (64, 16, 210), (64, 32, 190), (64, 64, 170), (64, 256, 150)]  # fmt: skip
N, M, RANK = 16, 24, 4
TOKENS, WIDTH = 77, 1024


def make_sd21_dir(root: Path, seed: int = 0, full: bool = False) -> Path:
    """vae/, unet/ and scheduler/ of a tiny SD-2.1-shaped model (``full``: SD-2.1's own
    sizes, random weights), saved by diffusers."""
    torch.manual_seed(seed)
    if full:
        from oscar_core.autoencoder import build_vae
        from oscar_core.registry import get_config

        config = get_config("oscar-sd21")
        vae = build_vae(config.autoencoder)
        unet = UNet2DConditionModel(**config.denoiser.unet_kwargs())
    else:
        vae, unet = _small_vae(), _small_unet()
    # SD-2.1 ships a DDIM scheduler config; the reference reads it into a DDPMScheduler
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, num_train_timesteps=1000,
    )  # fmt: skip
    vae.save_pretrained(root / "vae")
    unet.save_pretrained(root / "unet")
    scheduler.save_pretrained(root / "scheduler")
    return root


def _small_vae() -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _small_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=WIDTH,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=8,
    )


class RBB(nn.Module):
    """Residual bottleneck block of the notes: 1x1 N->N/2, ReLU, 3x3, ReLU, 1x1 N/2->N."""

    def __init__(self, ch: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(ch, ch // 2, 1), nn.ReLU(), conv3x3(ch // 2, ch // 2), nn.ReLU(),
            nn.Conv2d(ch // 2, ch, 1),
        )  # fmt: skip

    def forward(self, x):
        return x + self.layers(x)


class RefHyperEncoder(nn.Module):
    """The reference's HEAD hyper-encoder, slot for slot from the notes' table."""

    def __init__(self, ss: int, K: int, N: int = N, M: int = M):
        super().__init__()

        def down(i, o, s2):
            return conv(i, o) if s2 else nn.Conv2d(i, o, 1)

        def up(i, o, s2):
            return deconv(i, o) if s2 else nn.Conv2d(i, o, 1)

        self.backbone = nn.Sequential(
            down(4, N, ss < 16), RBB(N), RBB(N), RBB(N),
            down(N, N, ss < 32), RBB(N), RBB(N), RBB(N),
            AttentionBlock(N),
            down(N, N, ss != 64), RBB(N), RBB(N), RBB(N),
            nn.Conv2d(N, M, 1), AttentionBlock(M),
        )  # fmt: skip
        self.proj = nn.Sequential(
            up(M, M, ss < 16), RBB(M), RBB(M), RBB(M),
            up(M, M, ss < 32), RBB(M), RBB(M), RBB(M),
            up(M, M, ss != 64), RBB(M), RBB(M), RBB(M),
            nn.Conv2d(M, 4, 1),
        )  # fmt: skip
        self.quantizer = VectorQuantize(
            dim=M, codebook_size=K, use_cosine_sim=True, codebook_dim=32
        )

    def forward(self, z):
        y = self.backbone(z)
        b, m, h, w = y.shape
        q, _, _ = self.quantizer(y.permute(0, 2, 3, 1).reshape(b, h * w, m))
        return self.proj(q.reshape(b, h, w, m).permute(0, 3, 1, 2))


class ReferenceOscar(nn.Module):
    """The reference model (eval form) on a diffusers SD-2.1 directory."""

    def __init__(
        self, sd21: Path, seed: int = 1, widths: tuple[int, int] = (N, M), rank: int = RANK
    ):
        super().__init__()
        from peft import LoraConfig

        torch.manual_seed(seed)
        self.vae = AutoencoderKL.from_pretrained(sd21 / "vae")
        self.unet = UNet2DConditionModel.from_pretrained(sd21 / "unet")
        self.scheduler = DDPMScheduler.from_pretrained(sd21, subfolder="scheduler")
        self.hyper_encoders = nn.ModuleList(
            RefHyperEncoder(ss, K, *widths) for ss, K, _ in REFERENCE_RATES
        )
        self.timesteps = [t for _, _, t in REFERENCE_RATES]
        self.embeddings = nn.Parameter(torch.randn(TOKENS, WIDTH) * 0.5)
        names = [n[: -len(".weight")] for n, _ in self.unet.named_parameters()
                 if n.endswith(".weight") and "norm" not in n
                 and any(p in n for p in ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2",
                                           "conv_in", "proj_in", "proj_out", "conv_out"))]  # fmt: skip
        self.rank = rank
        self.modules_of = {
            "encoder": [n for n in names if "down_blocks" in n or "conv_in" in n],
            "decoder": [n for n in names if "up_blocks" in n or "conv_out" in n],
            "others": [n for n in names if "down_blocks" not in n and "up_blocks" not in n
                       and "conv_in" not in n and "conv_out" not in n],
        }  # fmt: skip
        for part, modules in self.modules_of.items():
            cfg = LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=modules)
            self.unet.add_adapter(cfg, adapter_name=f"default_{part}")
        self.unet.set_adapter([f"default_{p}" for p in self.modules_of])
        with torch.no_grad():  # "trained": lora_B starts at zero, conv_in moves
            for name, p in self.unet.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
                elif name.startswith("conv_in.base_layer"):
                    p.add_(torch.randn_like(p) * 0.02)
        self.eval()

    def checkpoint(self) -> dict:
        """The dict the reference's ``torch.save`` writes."""
        state = self.unet.state_dict()
        return {
            "hyper_encoders": self.hyper_encoders.state_dict(),
            "embeddings": self.embeddings.detach().clone(),
            "rank_unet": self.rank,
            **{f"unet_lora_{p}_modules": m for p, m in self.modules_of.items()},
            "state_dict_unet": {k: v for k, v in state.items() if "lora" in k or "conv_in" in k},
        }

    @torch.no_grad()
    def forward(self, img: torch.Tensor, i: int, norms: torch.Tensor | None = None):
        """img (B,3,H,W) in [-1,1] -> decoded (B,3,H,W) in [-1,1] at rate i. ``norms``
        (B,4): per-channel RMS of z0 to use instead of the exact one (the transmitted one)."""
        sf = self.vae.config.scaling_factor
        latents = self.vae.encode(img).latent_dist.mode() * sf
        z_hat = self.hyper_encoders[i](latents)
        a_z = latents.norm(dim=(2, 3), keepdim=True)
        if norms is not None:  # RMS * sqrt(positions) = L2 norm
            a_z = norms[:, :, None, None] * (latents.shape[2] * latents.shape[3]) ** 0.5
        x_t = z_hat * a_z / z_hat.norm(dim=(2, 3), keepdim=True)
        t = self.timesteps[i]
        tokens = self.embeddings.unsqueeze(0).repeat(img.shape[0], 1, 1)
        v = self.unet(x_t, t, encoder_hidden_states=tokens).sample
        x0 = self.scheduler.step(v, t, x_t).pred_original_sample
        return self.vae.decode(x0 / sf).sample.clamp(-1, 1)
