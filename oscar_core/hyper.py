"""Per-rate hyper-encoder, vector quantiser and projection: z0 -> indices -> z~.

    z0 (B,4,h,w) --backbone--> y (B,M,h/d,w/d) --VQ (cosine, dim 32, K codes)--> indices
    indices (B,h/d,w/d) --codebook + project_out--> y_hat (B,M,h/d,w/d) --proj--> z~ (B,4,h,w)

with d = 64/ss the per-side downsampling of the rate. The module layout (``backbone``,
``proj``, ``quantizer`` and the slot indices inside them) is the reference's (a PerCo-style
hyper-encoder), so its checkpoints map key for key; compressai layers (``conv``, ``deconv``,
``conv3x3``) build it, and vector-quantize-pytorch's ``VectorQuantize`` is the quantiser
(EMA codebook, k-means init and dead-code restarts while training).

Inference does not call ``VectorQuantize.forward`` (it can update buffers, e.g. k-means init
even in eval mode): ``encode_indices`` is a pure argmax of cosine similarity and
``decode_indices`` the library's ``get_output_from_indices``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai.layers import conv3x3
from compressai.models.utils import conv, deconv
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from .config import HyperConfig
from .ladder import Rate


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


class ResidualBottleneckBlock(nn.Module):
    """x + (1x1 -> ReLU -> 3x3 -> ReLU -> 1x1)(x), half width inside (reference key names)."""

    def __init__(self, ch: int):
        super().__init__()
        self.layers = nn.Sequential(
            conv1x1(ch, ch // 2),
            nn.ReLU(inplace=True),
            conv3x3(ch // 2, ch // 2),
            nn.ReLU(inplace=True),
            conv1x1(ch // 2, ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class AttentionLayer(nn.Module):
    """Pre-norm multi-head self-attention over all positions of (B,C,H,W)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = x.reshape(b, c, h * w).permute(0, 2, 1)  # (B, HW, C)
        q = self.norm(seq)
        seq = seq + self.attn(q, q, q, need_weights=False)[0]
        return seq.permute(0, 2, 1).reshape(b, c, h, w)


def _resample(ch: int, factor: int, up: bool) -> nn.Module:
    """Slot that changes resolution by ``factor`` (1, 2, 4 or 8) with k5 s2 (de)convs.

    Factors 1 and 2 are the reference's exact layers; 4 and 8 stack s2 stages (the reference
    has a single s2 layer, so its two lowest rates do not reach their nominal grid).
    """
    if factor == 1:
        return conv1x1(ch, ch)
    layer = deconv if up else conv
    if factor == 2:
        return layer(ch, ch)
    stages: list[nn.Module] = []
    for _ in range(factor.bit_length() - 1):
        stages += [layer(ch, ch), nn.ReLU(inplace=True)]
    return nn.Sequential(*stages[:-1])


class HyperEncoder(nn.Module):
    """The codec of one rate. ``forward`` is for training; ``encode/decode_indices`` for coding."""

    def __init__(self, config: HyperConfig, rate: Rate, latent_channels: int = 4):
        super().__init__()
        N, M, d = config.N, config.M, rate.downsample
        self.rate = rate

        def attn(ch: int) -> nn.Module:
            return AttentionLayer(ch, config.attention_heads) if config.attention else nn.Identity()

        self.backbone = nn.Sequential(
            conv1x1(latent_channels, N),
            *(ResidualBottleneckBlock(N) for _ in range(3)),
            attn(N),
            _resample(N, d, up=False),
            *(ResidualBottleneckBlock(N) for _ in range(3)),
            attn(N),
            conv1x1(N, M),
            attn(M),
        )
        self.proj = nn.Sequential(
            *(ResidualBottleneckBlock(M) for _ in range(3)),
            _resample(M, d, up=True),
            *(ResidualBottleneckBlock(M) for _ in range(3)),
            conv1x1(M, M),
            conv1x1(M, latent_channels),
        )
        self.quantizer = VectorQuantize(
            dim=M,
            codebook_size=rate.K,
            codebook_dim=config.codebook_dim,
            use_cosine_sim=True,
            decay=0.99,
            kmeans_init=True,  # only runs in training forward; inference never calls forward
            threshold_ema_dead_code=2,
        )

    @torch.no_grad()
    def randomize_codebook(self) -> None:
        """Random unit codewords, marked initialised (from the global torch seed).

        A fresh codebook is all zeros until k-means runs on the first training batch, so an
        untrained model maps every input to index 0; ``Codec.from_config`` calls this so
        that a random model codes varied indices."""
        embed = self.quantizer._codebook.embed  # (1, K, codebook_dim)
        embed.copy_(F.normalize(torch.randn_like(embed), dim=-1))
        self.quantizer._codebook.initted.fill_(True)

    # -- coding path -------------------------------------------------------------------
    def encode_indices(self, z0: Tensor) -> Tensor:
        """z0 (B,4,h,w) -> indices (B,h/d,w/d) int64: argmax cosine similarity."""
        y = self.backbone(z0)
        b, m, hc, wc = y.shape
        y = y.permute(0, 2, 3, 1).reshape(b, hc * wc, m)
        y = F.normalize(self.quantizer.project_in(y), dim=-1)  # (B, L, codebook_dim)
        codebook = F.normalize(self.quantizer._codebook.embed[0], dim=-1)  # (K, codebook_dim)
        return (y @ codebook.t()).argmax(dim=-1).reshape(b, hc, wc)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """indices (B,hc,wc) -> z~ (B,4,hc*d,wc*d)."""
        b, hc, wc = indices.shape
        y_hat = self.quantizer.get_output_from_indices(indices.reshape(b, hc * wc))  # (B,L,M)
        y_hat = y_hat.reshape(b, hc, wc, -1).permute(0, 3, 1, 2)
        return self.proj(y_hat)

    # -- training path -----------------------------------------------------------------
    def code_entropy(self, z0: Tensor, temperature: float = 0.1) -> Tensor:
        """Normalised entropy in [0, 1] of the batch's mean soft code assignment.

        softmax(cos(y, codebook) / temperature) per position (B*L, K), averaged over every
        position -> p (K,); returns H(p) / log K. Training maximises it for rates whose
        small codebooks collapse onto a few codes (dead codes waste the rate the ladder
        promises); the codebook is detached, so only the encoder moves.
        """
        y = self.backbone(z0)
        b, m, hc, wc = y.shape
        y = F.normalize(self.quantizer.project_in(y.permute(0, 2, 3, 1).reshape(-1, m)), dim=-1)
        codebook = F.normalize(self.quantizer._codebook.embed[0].detach(), dim=-1)
        p = ((y @ codebook.t()) / temperature).softmax(dim=-1).mean(dim=0)  # (K,)
        return -(p * p.clamp_min(1e-12).log()).sum() / math.log(self.rate.K)

    def forward(self, z0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z0 -> (z~, indices, commitment loss); EMA codebook updates in train mode."""
        y = self.backbone(z0)
        b, m, hc, wc = y.shape
        y_hat, indices, commit = self.quantizer(y.permute(0, 2, 3, 1).reshape(b, hc * wc, m))
        y_hat = y_hat.reshape(b, hc, wc, m).permute(0, 3, 1, 2)
        return self.proj(y_hat), indices.reshape(b, hc, wc), commit.sum()


def channel_rms(z: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-channel RMS over positions: (B,C,h,w) -> (B,C)."""
    return z.pow(2).mean(dim=(2, 3)).clamp_min(eps).sqrt()


def match_norms(z_tilde: Tensor, rms: Tensor) -> Tensor:
    """Rescale each channel of z~ to the transmitted RMS of z0 -> the noisy state x_t.

    The reference matches L2 norms; with equal position counts that is the same map, and the
    RMS stays in float16 range for any image size (it is what the bitstream carries).
    """
    scale = rms / channel_rms(z_tilde)
    return z_tilde * scale[:, :, None, None]


def cosine_per_position(a: Tensor, b: Tensor) -> Tensor:
    """Stage-1 alignment: cosine over channels at each position, averaged -> scalar."""
    return F.cosine_similarity(a, b, dim=1).mean()


def cosine_per_channel(a: Tensor, b: Tensor) -> Tensor:
    """Stage-2 alignment: cosine over positions for each channel, averaged -> scalar."""
    return F.cosine_similarity(a.flatten(2), b.flatten(2), dim=2).mean()


@torch.no_grad()
def codebook_usage(indices: Tensor, K: int) -> Tensor:
    """Histogram of indices (K,) as float64 counts (the entropy coder's CDF source)."""
    return torch.bincount(indices.flatten(), minlength=K).double()
