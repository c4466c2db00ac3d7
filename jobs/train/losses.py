"""Losses and the fit step of OSCAR training (the stage plan: ``trainer.py``).

Perceptual loss: SSIM (pytorch-msssim) works offline; LPIPS (AlexNet) is added when the user
gives local weights (``lpips_weights``; nothing is downloaded). DISTS is not supported.
Adversarial loss: a small patch discriminator on pixels with the hinge loss. Unlike the
reference (whose discriminator call sits under ``no_grad``), the generator term
``-D(x_hat)`` keeps its graph, so its gradient reaches the denoiser and the hyper-encoders
(tested in tests/jobs/train/test_train.py). Stage 3's loss is ``decoder.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor, nn

from jobs.common.colour import chroma_l1
from jobs.common.lpips import Lpips
from oscar_core.entropy import pmf_from_histogram
from oscar_core.hyper import channel_rms, codebook_usage, cosine_per_channel, match_norms


def one_minus_ssim(x_hat: Tensor, x: Tensor) -> Tensor:
    """1 - SSIM of images in [-1, 1] (clamped: SSIM assumes the data range)."""
    return 1 - ssim((x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2, data_range=1.0, size_average=True)


def autoencoder_loss(
    ae, x: Tensor, w_ssim: float = 0.2, w_kl: float = 1e-6, w_chroma: float = 0.0
) -> dict:
    """Stage 0: VAE reconstruction of x (B,3,c,c) from a posterior sample, small KL, and
    (w_chroma > 0) a Cb/Cr L1 term."""
    posterior = ae.encode_posterior(x)
    x_hat = ae.decode_unscaled(posterior.sample())
    l1 = (x_hat - x).abs().mean()
    s = one_minus_ssim(x_hat, x)
    kl = posterior.kl().mean()
    losses = {"l1": l1.detach(), "1-ssim": s.detach()}
    total = l1 + w_ssim * s + w_kl * kl
    if w_chroma:
        chroma = chroma_l1(x_hat, x)
        total = total + w_chroma * chroma
        losses["chroma"] = chroma.detach()
    return {"total": total, **losses}


class PatchDiscriminator(nn.Module):
    """(B,3,H,W) -> (B,1,H/8,W/8) realness logits; small enough for CPU training."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width * 2, 4, 2, 1),
            nn.GroupNorm(8, width * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width * 2, width * 4, 4, 2, 1),
            nn.GroupNorm(8, width * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width * 4, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class HingeGan:
    """What the losses of stages 2 and 3 share: the cached crops a step draws from, and the
    adversarial part, a patch discriminator trained with the hinge loss (its own AdamW) and
    the generator term -D(x_hat). The discriminator is checkpointed with the stage.

    A subclass sets ``DEFAULT_WEIGHTS`` (at least ``adv`` and ``adv_start``; ``weights``
    overrides them) and ``SEED_OFFSET`` (its crop RNG is ``seed + SEED_OFFSET``)."""

    DEFAULT_WEIGHTS: dict = {"adv": 5e-3, "adv_start": 200}
    SEED_OFFSET = 0

    def __init__(
        self,
        model,
        disc: PatchDiscriminator,
        x_all: Tensor,  # (N,3,c,c) uint8 crops
        z0_all: Tensor,  # (N,4,c/8,c/8) their cached latents
        batch: int,
        device: torch.device,
        seed: int = 0,
        weights: dict | None = None,
        grad_sync=None,  # params -> None: averages the discriminator's grads over ranks
    ):
        self.model, self.x_all, self.z0_all = model, x_all, z0_all
        self.batch, self.device = batch, device
        self.w = self.DEFAULT_WEIGHTS | (weights or {})
        self.rng = np.random.default_rng(seed + self.SEED_OFFSET)
        self.disc = disc
        self.d_opt = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.5, 0.9))
        self.grad_sync = grad_sync

    def draw(self) -> tuple[Tensor, Tensor]:
        """A random batch of cached crops: x (B,3,c,c) in [-1, 1] and its z0 (B,4,c/8,c/8)."""
        pick = self.rng.integers(len(self.x_all), size=self.batch)
        x = (self.x_all[pick].float() / 127.5 - 1).to(self.device)
        return x, self.z0_all[pick].to(self.device)

    def adversarial(self, step: int, x: Tensor, x_hat: Tensor, losses: dict) -> Tensor | float:
        """From ``adv_start`` on: one discriminator step, then w_adv * -D(x_hat) (noted in
        ``losses``); before that (or with w_adv = 0), 0."""
        if self.w["adv"] <= 0 or step < self.w["adv_start"]:
            return 0.0
        self.discriminator_step(x, x_hat.detach())
        g_adv = self.generator_adv(x_hat)
        losses["g_adv"] = g_adv.detach()
        return self.w["adv"] * g_adv

    def generator_adv(self, x_hat: Tensor) -> Tensor:
        """-D(x_hat): keeps the graph so the gradient reaches the generator."""
        return -self.disc(x_hat).mean()

    def discriminator_step(self, x: Tensor, x_fake: Tensor) -> float:
        d_loss = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(x_fake)).mean()
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.grad_sync is not None:
            self.grad_sync(list(self.disc.parameters()))
        self.d_opt.step()
        self.d_opt.zero_grad(set_to_none=True)  # -D(x_hat) will add grads here; not applied
        return float(d_loss.detach())

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "d_opt": self.d_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.disc.load_state_dict(state["disc"])
            self.d_opt.load_state_dict(state["d_opt"])


class Stage2Loss(HingeGan):
    """One joint step at a random rate; also updates the discriminator (hinge loss)."""

    DEFAULT_WEIGHTS = {"ssim": 0.5, "latent": 1.0, "align": 0.5, "adv": 5e-3, "adv_start": 200}
    SEED_OFFSET = 22

    def __init__(
        self,
        *args,  # HingeGan's: model, disc, x_all, z0_all, batch, device, seed, weights, ...
        extra_loss=None,  # (rate_index, z0) -> loss term or 0.0 (e.g. codebook diversity)
        rate_seed: int | None = None,  # own RNG for the rate (the same on every rank); None:
        # the crop RNG draws it too (single process)
        lpips_weights: str | None = None,  # local LPIPS/AlexNet weights -> LPIPS loss term
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.rate_rng = self.rng if rate_seed is None else np.random.default_rng(rate_seed)
        self.extra_loss = extra_loss
        self.lpips = None
        if lpips_weights:  # frozen network; its gradient flows to x_hat only
            self.lpips = Lpips(lpips_weights).model.to(self.device).requires_grad_(False)

    def __call__(self, step: int) -> dict:
        x, z0 = self.draw()
        rate = int(self.rate_rng.integers(len(self.model.ladder)))
        out = self.model(x, rate, z0=z0)
        x_hat = out["x_hat"]
        l1 = (x_hat - x).abs().mean()
        s = one_minus_ssim(x_hat, x)
        latent = (out["z0_hat"] - z0).abs().mean()
        align = -cosine_per_channel(out["z_tilde"], z0)
        total = l1 + self.w["ssim"] * s + self.w["latent"] * latent + self.w["align"] * align
        total = total + out["commit"]
        losses = {"l1": l1.detach(), "1-ssim": s.detach(), "latent": latent.detach()}
        if self.lpips is not None:  # inputs in [-1, 1]: LPIPS's own range
            lp = self.lpips(x_hat.clamp(-1, 1), x).mean()
            total = total + self.w["lpips"] * lp
            losses["lpips"] = lp.detach()
        extra = self.extra_loss(rate, z0) if self.extra_loss else 0.0
        if torch.is_tensor(extra):
            total = total + extra
            losses["extra"] = extra.detach()
        losses["total"] = total + self.adversarial(step, x, x_hat, losses)
        return losses


@torch.no_grad()
def fit_rate(model, rate_index: int, z0: Tensor) -> dict:
    """Mean cos(x_t, z0) on held-out latents -> t_r; index histogram -> pmf (K,)."""
    rate = model.ladder[rate_index]
    hyper = model.hypers[rate_index]
    indices = torch.cat([hyper.encode_indices(chunk) for chunk in z0.split(32)])
    z_tilde = torch.cat([hyper.decode_indices(chunk) for chunk in indices.split(32)])
    x_t = match_norms(z_tilde, channel_rms(z0))
    cos = F.cosine_similarity(x_t.flatten(1), z0.flatten(1), dim=1).mean().item()
    sqrt_abar = model.denoiser.alphas_cumprod.sqrt().cpu()
    t = int((sqrt_abar - cos).abs()[1:].argmin()) + 1  # t >= 1: the denoiser always acts
    counts = codebook_usage(indices.cpu(), rate.K).numpy()
    pmf = pmf_from_histogram(counts)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return {
        "rate": rate_index,
        "cos": round(cos, 5),
        "t": t,
        "used_codes": int((counts > 0).sum()),
        "K": rate.K,
        "entropy_bits_per_code": round(entropy, 4),
        "pmf": pmf.astype(np.float32),
    }
