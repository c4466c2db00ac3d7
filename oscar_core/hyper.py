"""Per-rate hyper-encoder, vector quantiser and projection: z0 -> indices -> z~.

    z0 (B,4,h,w) --backbone--> y (B,M,h/d,w/d) --VQ (cosine, dim 32, K codes)--> indices
    indices (B,h/d,w/d) --codebook + project_out--> y_hat (B,M,h/d,w/d) --proj--> z~ (B,4,h,w)

with d = 64/ss the per-side downsampling of the rate. The module layout (``backbone``,
``proj``, ``quantizer`` and the slot indices inside them) is the reference's at its HEAD
(cb23f4e, "update hyper-encoder"), so its checkpoints map key for key; compressai layers
(``conv``, ``deconv``, ``conv3x3``, ``AttentionBlock``) build it, and
vector-quantize-pytorch's ``VectorQuantize`` is the quantiser (EMA codebook, k-means init and
dead-code restarts while training). ``hyper_layout`` tells the reference's older layout
(5bb805c) from this one by its keys, so that loaders can name what they were given.

Inference does not call ``VectorQuantize.forward`` (it can update buffers, e.g. k-means init
even in eval mode): ``encode_indices`` is a pure argmax of cosine similarity and
``decode_indices`` the library's ``get_output_from_indices``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from compressai.layers import AttentionBlock, conv3x3
from compressai.models.utils import conv, deconv
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from .config import HyperConfig
from .ladder import Rate

ARGMAX_ELEMENTS = 1 << 24  # similarities held at a time by encode_indices (64 MiB)


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


def _stage(in_ch: int, out_ch: int, stride2: bool, up: bool) -> nn.Module:
    """A resolution slot: compressai's k5 s2 ``conv`` (``deconv`` when ``up``) where the rate
    needs a stride-2 stage there, else a 1x1 conv (the reference's rule, slot for slot)."""
    if not stride2:
        return conv1x1(in_ch, out_ch)
    return deconv(in_ch, out_ch) if up else conv(in_ch, out_ch)


def _blocks(ch: int) -> list[nn.Module]:
    return [ResidualBottleneckBlock(ch) for _ in range(3)]


class HyperEncoder(nn.Module):
    """The codec of one rate, in the reference's layout (HEAD cb23f4e), slot for slot.

    ``s = log2(64 / ss)`` stride-2 stages (ss = 64 / 32 / 16 / 8 -> 0 / 1 / 2 / 3), placed
    in the three resolution slots from the last one back, so every rate reaches its grid:

        backbone: 0 in(4->N, s>=3) | 1-3 RBB(N) | 4 res(s>=2) | 5-7 RBB(N) | 8 Attn(N) |
                  9 res(s>=1) | 10-12 RBB(N) | 13 conv1x1(N->M) | 14 Attn(M)
        proj:     0 res(M, s>=3) | 1-3 RBB(M) | 4 res(s>=2) | 5-7 RBB(M) | 8 res(s>=1) |
                  9-11 RBB(M) | 12 conv1x1(M->4)

    Attn is compressai's ``AttentionBlock``; ``attention=False`` (oscar-tiny, for CPU
    speed) puts parameter-free ``nn.Identity`` in those slots, so the slot numbers and every
    other key stay the reference's. ``forward`` is for training; ``encode/decode_indices``
    for coding.
    """

    def __init__(self, config: HyperConfig, rate: Rate, latent_channels: int = 4):
        super().__init__()
        N, M = config.N, config.M
        s = rate.downsample.bit_length() - 1  # stride-2 stages: d = 2**s
        self.rate = rate

        def attn(ch: int) -> nn.Module:
            return AttentionBlock(ch) if config.attention else nn.Identity()

        self.backbone = nn.Sequential(
            _stage(latent_channels, N, s >= 3, up=False),
            *_blocks(N),
            _stage(N, N, s >= 2, up=False),
            *_blocks(N),
            attn(N),
            _stage(N, N, s >= 1, up=False),
            *_blocks(N),
            conv1x1(N, M),
            attn(M),
        )
        self.proj = nn.Sequential(
            _stage(M, M, s >= 3, up=True),
            *_blocks(M),
            _stage(M, M, s >= 2, up=True),
            *_blocks(M),
            _stage(M, M, s >= 1, up=True),
            *_blocks(M),
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
    def codewords(self) -> Tensor:
        """The unit codewords (K, codebook_dim) the VQ compares by cosine similarity."""
        return F.normalize(self.quantizer._codebook.embed[0], dim=-1)

    def encode_indices(self, z0: Tensor) -> Tensor:
        """z0 (B,4,h,w) -> indices (B,h/d,w/d) int64: argmax cosine similarity."""
        y = self.backbone(z0)
        b, m, hc, wc = y.shape
        y = y.permute(0, 2, 3, 1).reshape(b, hc * wc, m)
        y = F.normalize(self.quantizer.project_in(y), dim=-1)  # (B, L, codebook_dim)
        codebook = self.codewords().t()  # (codebook_dim, K)
        # the similarities (B, L, K) a chunk of positions at a time: whole, they would take
        # L * K * 4 bytes (a 64 MP image at K = 2048: 2 GB); a row's dot products are the same
        chunk = max(1, ARGMAX_ELEMENTS // codebook.shape[1])
        best = [(part @ codebook).argmax(dim=-1) for part in y.split(chunk, dim=1)]
        return torch.cat(best, dim=1).reshape(b, hc, wc)

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


HEAD_LAYOUT = "reference HEAD cb23f4e (15 backbone / 13 proj slots, compressai AttentionBlock)"
OLD_LAYOUT = "reference 5bb805c (nn.MultiheadAttention, one resampling slot)"


def hyper_layout(keys: Iterable[str]) -> str | None:
    """Which hyper-encoder layout a state dict's keys have: ``HEAD_LAYOUT``, ``OLD_LAYOUT``
    or None (neither). Keys are relative to one ``HyperEncoder`` or prefixed by an index or
    module path (``0.backbone.4.weight``, ``hypers.3.proj.12.bias``).

    The older layout had 12 backbone slots (a MultiheadAttention layer: ``attn.in_proj_*``)
    and 9 proj slots; HEAD has 15 and 13 (``proj.12`` is the last 1x1 conv to the latent).
    """
    keys = list(keys)
    if any(".attn.in_proj_" in k for k in keys):
        return OLD_LAYOUT
    slots = {
        (m.group(1), int(m.group(2)))
        for k in keys
        if (m := re.search(r"(?:^|\.)(backbone|proj)\.(\d+)\.", k))
    }
    if not slots:
        return None
    top = {
        part: max((i for p, i in slots if p == part), default=-1) for part in ("backbone", "proj")
    }
    if top["proj"] == 12:
        return HEAD_LAYOUT
    if top["proj"] == 8 and top["backbone"] <= 11:
        return OLD_LAYOUT
    return None


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
