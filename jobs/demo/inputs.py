"""The demo's input: the bundled samples (``jobs/samples/*.png``, four Kodak images) and the
WebDataset shards packed from them, each sample ``<key>.png`` + ``<key>.json`` (the file
name) + ``<key>.txt`` (a caption).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from jobs.common.paths import SAMPLES_DIR

CAPTIONS = {  # the Kodak images' subjects
    "kodim03": "colourful hats hanging on a wall",
    "kodim07": "red flowers in a window box by a shuttered window",
    "kodim15": "a girl with face paint",
    "kodim23": "two parrots",
}


def sample_paths() -> list[Path]:
    """The bundled PNGs, sorted; FileNotFoundError when there are none."""
    paths = sorted(SAMPLES_DIR.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no sample images in {SAMPLES_DIR}")
    return paths


def load_image(path: Path) -> np.ndarray:
    """An image file -> (H,W,3) uint8 RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def pack_shards(paths: list[Path], n_shards: int) -> dict[str, bytes]:
    """WebDataset tars: ``<key>.png`` (the file's bytes) + ``.json`` + ``.txt`` per sample."""
    shards: dict[str, bytes] = {}
    per = -(-len(paths) // n_shards)
    for s in range(n_shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for path in paths[s * per : (s + 1) * per]:
                meta = json.dumps({"file": path.name}).encode()
                caption = CAPTIONS.get(path.stem, path.stem).encode()
                for ext, data in (("png", path.read_bytes()), ("json", meta), ("txt", caption)):
                    info = tarfile.TarInfo(f"{path.stem}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tf.addfile(info, io.BytesIO(data))
        shards[f"shard-{s:06d}.tar"] = buf.getvalue()
    return shards
