"""Image conversion at the codec's edge: inputs -> RGB uint8 arrays -> padded tensors, and back.

Colour handling (documented in the README): the codec codes RGB. Grayscale ("L", "I;16",
"I", "F") is replicated to three channels (16-bit is scaled to 8 bits); palette ("P") is
expanded; alpha ("LA", "RGBA", "PA") is dropped (the colour planes are coded, alpha is not);
CMYK and YCbCr are converted by Pillow. Output images are always RGB uint8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

MAX_SIDE = 65535  # the bitstream stores H and W as uint16


def rgb_arrays(images: Sequence[Image.Image | np.ndarray]) -> list[np.ndarray]:
    """Every image through ``to_rgb_array``, all checked before any work: ValueError
    naming the first bad image's position."""
    arrays = []
    for i, image in enumerate(images):
        try:
            arrays.append(to_rgb_array(image))
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from None
    return arrays


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or an (H,W), (H,W,1|3|4) uint8 array -> (H,W,3) uint8, C-contiguous."""
    if isinstance(image, Image.Image):
        if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
            arr = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if arr.max() > 255 else 255.0
            image = Image.fromarray((arr * (255.0 / peak)).round().clip(0, 255).astype(np.uint8))
        elif image.mode == "F":
            arr = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8))
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]
        elif not (arr.ndim == 3 and arr.shape[2] == 3):
            raise ValueError(
                f"image array must be (H,W), (H,W,1), (H,W,3) or (H,W,4), got {arr.shape}"
            )
    else:
        raise ValueError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    h, w = arr.shape[:2]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"image size {w}x{h} outside 1..{MAX_SIDE} pixels per side")
    return np.ascontiguousarray(arr)


def pixel_limit_error(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of ``width x height`` is refused under ``max_pixels``, or None."""
    if width * height <= max_pixels:
        return None
    return (
        f"too many pixels: {width}x{height} = {width * height} exceeds max_pixels = "
        f"{max_pixels} (raise it with --max-pixels)"
    )


def to_tensor(batch: list[np.ndarray]) -> Tensor:
    """Same-size (H,W,3) uint8 arrays -> (B,3,H,W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: Tensor) -> list[np.ndarray]:
    """(B,3,H,W) in [-1,1] -> list of (H,W,3) uint8 (round half to even, clamp)."""
    return [np.ascontiguousarray(img) for img in to_uint8_batch(x)]


def to_uint8_batch(x: Tensor) -> np.ndarray:
    """(B,3,H,W) in [-1,1] -> (B,H,W,3) uint8 on the CPU (round half to even, clamp).
    One float temporary (the in-place ops on it): strips of a big image are large."""
    q = x.float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
    return q.permute(0, 2, 3, 1).cpu().numpy()


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_reflect(x: Tensor, height: int, width: int) -> Tensor:
    """Pad (B,C,h,w) on the bottom/right to (height, width) by reflection.

    Reflection needs pad < side; larger pads reflect repeatedly, and a side of 1 pixel (nothing
    to reflect) is replicated.
    """
    while x.shape[-2] < height or x.shape[-1] < width:
        h, w = x.shape[-2:]
        ph = min(height - h, h - 1) if h > 1 else height - h
        pw = min(width - w, w - 1) if w > 1 else width - w
        mode = "reflect" if (ph == 0 or h > 1) and (pw == 0 or w > 1) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def padded_index(n: int, target: int) -> np.ndarray:
    """(target,) int64: the source position of each position ``pad_reflect`` makes when it
    pads an axis of ``n`` to ``target``, so a tile of the padded image can be read straight
    from the unpadded one (``image[np.ix_(rows, cols)]``) without padding it whole."""
    positions = torch.arange(n, dtype=torch.float64).view(1, 1, 1, n)  # exact below 2**53
    return pad_reflect(positions, 1, target).view(-1).long().numpy()


def crop(x: Tensor, height: int, width: int) -> Tensor:
    return x[..., :height, :width]


def center_crop(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """The centre ``height`` x ``width`` (default: a square) of an (H, W, ...) array, as a
    C-contiguous copy; a side already smaller than asked for is kept whole."""
    h, w = image.shape[:2]
    ch, cw = min(height, h), min(height if width is None else width, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw].copy()
