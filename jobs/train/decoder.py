"""Stage 3 of OSCAR training: fine-tune the latent decoder on what the codec feeds it.

The latent decoder is trained in stage 0 on the autoencoder's own latents z0 and then frozen.
At decode time it sees z0_hat, the one-step denoiser's estimate, which is smoother and off
in colour (the tiny autoencoder's colours are already desaturated: saturation 47 -> 34 on
kodim03). Stage 3 trains only the decoder (post_quant_conv + decoder), everything upstream
frozen, so z0, the bitstreams, the hyper-encoders and the denoiser stay valid:

    x (B,3,c,c) --frozen encoder--> z0 --frozen hyper r + denoiser--> z0_hat (no grad)
    z0_hat (or z0 itself with probability p_clean) --decoder (trained)--> x_hat

Loss: L1 + w_ssim (1 - SSIM) + w_chroma |mean colour difference| + hinge GAN (a fresh patch
discriminator, from ``adv_start``). The chroma term compares per-image channel means of
x_hat and x (B,3): a global colour cast costs the same whatever the texture, where L1
under-weights it against the residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jobs.train.losses import HingeGan, one_minus_ssim
from oscar_core.hyper import channel_rms, match_norms


class DecoderLoss(HingeGan):
    """One stage-3 step: a random rate's z0_hat (or z0) -> decoder -> losses."""

    DEFAULT_WEIGHTS = {"ssim": 0.5, "chroma": 1.0, "adv": 5e-3, "adv_start": 100, "p_clean": 0.2}
    SEED_OFFSET = 33

    @torch.no_grad()
    def latent(self, z0: Tensor, rate: int | None) -> Tensor:
        """z0 (B,4,h,w) -> what the decoder sees at ``rate`` (None: z0 itself)."""
        if rate is None:
            return z0
        hyper = self.model.hypers[rate]
        z_tilde = hyper.decode_indices(hyper.encode_indices(z0))
        x_t = match_norms(z_tilde, channel_rms(z0))
        t = torch.full(
            (z0.shape[0],), self.model.ladder[rate].t, dtype=torch.long, device=z0.device
        )
        return self.model.denoiser(x_t, t)

    def __call__(self, step: int) -> dict:
        x, z0 = self.draw()
        clean = self.rng.random() < self.w["p_clean"]
        rate = None if clean else int(self.rng.integers(len(self.model.ladder)))
        x_hat = self.model.autoencoder.decode_unclamped(self.latent(z0, rate))
        l1 = (x_hat - x).abs().mean()
        s = one_minus_ssim(x_hat, x)
        chroma = F.l1_loss(x_hat.mean(dim=(2, 3)), x.mean(dim=(2, 3)))  # (B,3) colour cast
        total = l1 + self.w["ssim"] * s + self.w["chroma"] * chroma
        losses = {"l1": l1.detach(), "1-ssim": s.detach(), "chroma": chroma.detach()}
        losses["total"] = total + self.adversarial(step, x, x_hat, losses)
        return losses


def decoder_parameters(model) -> list:
    """The trainable part of stage 3: the VAE's post_quant_conv and decoder (and the colour
    skip's decoder side, when the autoencoder has one)."""
    ae = model.autoencoder
    skip = list(ae.skip_out.parameters()) if ae.config.colour_skip else []
    return list(ae.vae.post_quant_conv.parameters()) + list(ae.vae.decoder.parameters()) + skip
