"""``oscar demo`` (``make demo``): the shard pipeline end to end on the bundled samples, with
its own local S3 and Ray (``end_to_end.py``); or, with ``codec_only``, the quick table
without any server: every ladder rate on the samples in-process (bpp, PSNR, seconds),
bitstreams and PNGs under ``<out>/rate<i>/``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jobs.demo.end_to_end import run_pipeline_demo
from jobs.demo.inputs import load_image, sample_paths
from oscar_core.metrics import psnr


@dataclass
class DemoConfig:
    """What ``oscar demo`` runs, and where its outputs go."""

    model: str | None = None  # model directory (None: the shipped oscar-tiny)
    out: str = "out/demo"
    codec_only: bool = False  # no servers: every rate in-process
    workers: int | None = None  # Ray actors (None: one per CPU)


def run(config: DemoConfig) -> int:
    """The pipeline demo (servers), or ``codec_only`` (none); 130 when interrupted."""
    if config.codec_only:
        return run_codec_demo(config.model, config.out)
    try:
        return run_pipeline_demo(config.model, config.out, config.workers)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


def run_codec_demo(model: str | None = None, out: str = "out/demo") -> int:
    """Every ladder rate on the samples, in-process (no servers): bpp / PSNR / seconds."""
    from oscar_core import Codec

    codec = Codec.from_pretrained(model)
    paths = sample_paths()
    images = [load_image(p) for p in paths]
    out_dir = Path(out)
    print(f"model {codec.model.config.name} ({codec.model_id.hex()}), {len(images)} images")
    print(f"{'rate':>4} {'nominal':>8} {'measured':>9} {'PSNR dB':>8} {'enc s':>6} {'dec s':>6}")
    rows = []
    for rate in codec.ladder:
        t0 = time.perf_counter()
        streams = codec.compress(images, rate.index)
        t1 = time.perf_counter()
        decoded = codec.decompress(streams)
        t2 = time.perf_counter()
        rate_dir = out_dir / f"rate{rate.index}"
        rate_dir.mkdir(parents=True, exist_ok=True)
        for path, stream, image in zip(paths, streams, decoded, strict=True):
            (rate_dir / f"{path.stem}.oscar").write_bytes(stream)
            Image.fromarray(image).save(rate_dir / f"{path.stem}.png")
        pixels = sum(img.shape[0] * img.shape[1] for img in images)
        row = {
            "rate": rate.index,
            "nominal_bpp": rate.nominal_bpp,
            "measured_bpp": 8 * sum(len(s) for s in streams) / pixels,
            "psnr_db": float(np.mean([psnr(a, b) for a, b in zip(images, decoded, strict=True)])),
            "encode_s_per_image": (t1 - t0) / len(images),
            "decode_s_per_image": (t2 - t1) / len(images),
        }
        rows.append(row)
        print(
            f"{row['rate']:>4} {row['nominal_bpp']:>8.5f} {row['measured_bpp']:>9.4f} "
            f"{row['psnr_db']:>8.2f} {row['encode_s_per_image']:>6.2f} "
            f"{row['decode_s_per_image']:>6.2f}"
        )
    (out_dir / "codec_demo.json").write_text(json.dumps(rows, indent=2))
    print(f"outputs in {out_dir.resolve()}")
    return 0
