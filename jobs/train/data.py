"""Training data: images from a directory (or WebDataset tar shards) held in memory as uint8.

The development set is small (580 photos, ~50 MB as RGB uint8), so every image is decoded
once and random crops are cut from memory each step: on a 2-core CPU, JPEG decoding per step
would cost more than the model. Every ``holdout_every``-th image (sorted by path) is held out
for validation, so the split is the same in every run and across resumes.

Sources: a local directory (images and .tar files under it, recursively), or a WebDataset
shard spec read through ``pipeline.storage`` (the batch jobs' code: boto3's credential
chain, ``AWS_ENDPOINT_URL`` for a non-AWS store): a brace range
(``s3://bucket/train/shard-{000..009}.tar``), a glob (``s3://bucket/train/*.tar``,
``/data/*.tar``), a ``.txt`` list, or a bare ``s3://bucket/prefix`` (every .tar under it).
Shards are streamed (``pipeline.samples``: one image per WebDataset key, a bad sample is
skipped and counted), and their images decoded into memory like a directory's.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from jobs.common.images import IMAGE_EXTENSIONS

_PATTERN = re.compile(r"[*?\[{]")  # glob or brace characters: a shard spec, not a path
log = logging.getLogger("oscar.train")


def _decode(data: bytes | Path, max_side: int) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if max(img.size) > max_side:  # keep memory bounded; photos stay photo-like
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.asarray(img).copy()
    except (OSError, ValueError):
        return None


def _shrink(arr: np.ndarray, max_side: int) -> np.ndarray:
    """(H,W,3) uint8 -> the same, longest side <= max_side (as ``_decode`` does)."""
    if max(arr.shape[:2]) <= max_side:
        return arr
    img = Image.fromarray(arr)
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(img).copy()


def shard_urls(spec: str) -> list[str]:
    """A shard spec -> sorted URLs. A bare ``s3://bucket/prefix`` lists the .tar objects
    under it; anything else goes to ``storage.expand_shards`` (brace, glob, .txt list)."""
    from pipeline import storage

    loc = storage.parse_url(spec)
    if loc.scheme == "s3" and not _PATTERN.search(spec) and not spec.endswith((".tar", ".txt")):
        urls = [u for u in storage.list_prefix(spec) if u.endswith(".tar")]
        if not urls:
            raise ValueError(f"no .tar shards under {spec}")
        return urls
    return storage.expand_shards(spec)


def load_shards(spec: str, max_side: int = 1024) -> tuple[list[np.ndarray], list[str]]:
    """Decode every sample's image from the WebDataset shards ``spec`` names, in order."""
    from pipeline import storage
    from pipeline.samples import read_samples

    images, names, bad = [], [], 0
    urls = shard_urls(spec)
    for url in urls:
        with storage.open_read(url) as stream:  # streamed: one member in memory at a time
            for sample in read_samples(stream):
                if not sample.ok:
                    bad += 1
                    log.warning("skipped %s:%s: %s", url, sample.key, sample.error)
                    continue
                images.append(_shrink(sample.image, max_side))
                names.append(f"{url}:{sample.key}")
    log.info("read %d images from %d shards (%d bad samples skipped)", len(images), len(urls), bad)
    return images, names


def load_images(source: str | Path, max_side: int = 1024) -> tuple[list[np.ndarray], list[str]]:
    """All decodable images under a directory (recursive) or inside .tar shards there, or
    in the WebDataset shards of a spec (``s3://...``, a brace range, a glob, a .txt list)."""
    text = str(source)
    spec = _PATTERN.search(text) or text.endswith(".txt")  # a shard spec, unless a real path
    if text.startswith(("s3://", "file://")) or (spec and not Path(text).is_dir()):
        images, names = load_shards(text, max_side)
        if not images:
            raise ValueError(f"no decodable images in the shards of {text}")
        return images, names
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
