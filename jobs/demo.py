"""The embedded default: compress and decompress the bundled samples at every ladder rate.

Prints a table (rate, nominal bpp, measured bpp from the file sizes, PSNR, seconds) and
leaves the bitstreams and decoded PNGs under the output directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES_DIR = Path(__file__).parent / "samples"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_demo(model: str | None = None, out: str = "out/demo") -> int:
    from oscar_core import Codec

    codec = Codec.from_pretrained(model)
    paths = sorted(SAMPLES_DIR.glob("*.png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
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
    (out_dir / "demo.json").write_text(json.dumps(rows, indent=2))
    print(f"outputs in {out_dir.resolve()}")
    return 0
