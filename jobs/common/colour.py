"""Colour difference on Cb/Cr: a training loss term (stage 0) and an eval diagnostic
(``jobs.eval.autoencoder``) measure the same thing, so both use this one definition."""

from __future__ import annotations

import torch
from torch import Tensor

# RGB -> (Cb, Cr) rows of BT.601 (inputs in [-1,1]; the offsets cancel in a difference)
RGB_TO_CBCR = torch.tensor([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def to_cbcr(x: Tensor) -> Tensor:
    """(B,3,H,W) RGB in [-1,1] -> (B,2,H,W) Cb, Cr (zero for greys)."""
    return torch.einsum("kc,bchw->bkhw", RGB_TO_CBCR.to(x), x)


def chroma_l1(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean |Cb, Cr difference| of (B,3,H,W) images: the colour error L1 on RGB underweights
    (a grey reconstruction of a saturated green costs little RGB L1 next to luma detail)."""
    return to_cbcr(x_hat - x).abs().mean()
