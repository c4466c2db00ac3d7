"""Training data: images from a directory (or WebDataset tar shards) held in memory as uint8.

The development set is small (580 photos, ~50 MB as RGB uint8), so every image is decoded
once and random crops are cut from memory each step: on a 2-core CPU, JPEG decoding per step
would cost more than the model. Every ``holdout_every``-th image (sorted by path) is held out
for validation, so the split is the same in every run and across resumes.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def _decode(data: bytes | Path, max_side: int) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if max(img.size) > max_side:  # keep memory bounded; photos stay photo-like
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.asarray(img).copy()
    except (OSError, ValueError):
        return None


def load_images(source: str | Path, max_side: int = 1024) -> tuple[list[np.ndarray], list[str]]:
    """All decodable images under a directory (recursive) or inside .tar shards there."""
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"training data {root} does not exist")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    images, names = [], []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            arr = _decode(path, max_side)
            if arr is not None:
                images.append(arr)
                names.append(str(path))
        elif suffix == ".tar":
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                        arr = _decode(tar.extractfile(member).read(), max_side)
                        if arr is not None:
                            images.append(arr)
                            names.append(f"{path}:{member.name}")
    if not images:
        raise ValueError(f"no decodable images under {root}")
    return images, names


@dataclass
class CropSampler:
    """Random crops (with flips) from in-memory images -> (B,3,c,c) float in [-1, 1]."""

    images: list[np.ndarray]
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def batch(self, batch_size: int, crop: int) -> torch.Tensor:
        out = np.empty((batch_size, crop, crop, 3), dtype=np.uint8)
        for b in range(batch_size):
            img = self.images[self.rng.integers(len(self.images))]
            h, w = img.shape[:2]
            if min(h, w) < crop:  # upscale tiny images by tiling reflection
                img = np.pad(img, ((0, max(0, crop - h)), (0, max(0, crop - w)), (0, 0)), "reflect")
                h, w = img.shape[:2]
            y, x = self.rng.integers(h - crop + 1), self.rng.integers(w - crop + 1)
            patch = img[y : y + crop, x : x + crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[b] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def split(images: list[np.ndarray], holdout_every: int) -> tuple[list, list]:
    """Deterministic train / held-out split."""
    if holdout_every < 2:
        raise ValueError(f'Invalid holdout_every "{holdout_every}", should be >= 2')
    held = [img for i, img in enumerate(images) if i % holdout_every == 0]
    train = [img for i, img in enumerate(images) if i % holdout_every != 0]
    return train, held
