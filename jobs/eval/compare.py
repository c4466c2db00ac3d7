"""One image against OSCAR and every classic codec at OSCAR's bpp: the rows of ``oscar eval``.

``evaluate_image`` compresses the image with OSCAR at each rate (bpp from the real
bitstream), then searches each classic codec for the quality whose bpp is the closest NOT
ABOVE OSCAR's (``jobs.eval.codecs.QualityTable``); a codec that cannot go that low is
reported "cannot reach" and tried on the image downscaled (``avif@1/2``, ...). Everything
lands in an ``EvalState``: the rows, the crops of the contact sheet, the timings.

The downscaled variants, per codec and rate point, walk down the scales (1, 1/2, 1/4, 1/8,
1/16 by default): the next smaller one is tried while the current one cannot reach the
point, or reaches it only at a setting in the lowest LOW_SETTING of the codec's quality
range (where a smaller image coded better usually wins: the honest rival at the lowest
rates), and the walk stops at the first variant that scores worse than the one before it
(``quality_key``: SSIMULACRA 2, else MS-SSIM, else PSNR). So 1/16 is only reached where 1/8
still helped, and a high rate costs one measured variant per codec.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.eval.codecs import ClassicCodec, QualityTable
from jobs.eval.metrics import METRICS, Metric
from jobs.eval.summary import quality_key
from oscar_core.images import center_crop

SHEET_CROP = 256  # side of the contact sheet's centre crops
LOW_SETTING = 0.25  # a reached variant at a setting this low in its range: try a smaller one


@dataclass
class Sample:
    name: str
    image: np.ndarray  # (H, W, 3) uint8


@dataclass
class EvalState:
    """What the loop accumulates: rows, crops for the contact sheet, timings."""

    metrics: dict[str, Metric]
    rows: list[dict] = field(default_factory=list)
    crops: dict[tuple[str, int, str], tuple[np.ndarray, dict]] = field(default_factory=dict)
    originals: dict[str, np.ndarray] = field(default_factory=dict)  # sheet images' crops
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def score(self, ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
        t0 = time.perf_counter()
        out = {METRICS[n].column: float(fn(ref, test)) for n, fn in self.metrics.items()}
        self.seconds["metrics"] += time.perf_counter() - t0
        return out


def load_samples(paths: list[Path]) -> tuple[list[Sample], list[str]]:
    """Decode each file to RGB (names: file stems, made unique) -> samples, one error line
    per unreadable file."""
    from PIL import Image

    from oscar_core.images import to_rgb_array

    samples, errors, stems = [], [], [p.stem for p in paths]
    for path in paths:
        name = path.stem if stems.count(path.stem) == 1 else str(path)  # names must be unique
        try:
            with Image.open(path) as img:
                img.load()
                samples.append(Sample(name, to_rgb_array(img)))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            errors.append(f"{path}: cannot read image: {exc}")
    return samples, errors


def load_reporting(images: list[str]) -> tuple[list[Sample], bool]:
    """The images of files and directories (``find_images``), decoded; one ``oscar: error:``
    line on stderr per input that is missing or unreadable. -> (samples, any input bad)."""
    import sys

    from jobs.common.images import find_images

    paths, errors = find_images(images)
    samples, load_errors = load_samples(paths)
    for err in errors + load_errors:
        print(f"oscar: error: {err}", file=sys.stderr)
    return samples, bool(errors or load_errors)


def make_row(sample: Sample, label: str, codec: str, rate, target: float, **values) -> dict:
    h, w = sample.image.shape[:2]
    row = {"image": sample.name, "width": w, "height": h, "codec": codec, "variant": label}
    row |= {"rate": rate.index, "nominal_bpp": round(rate.nominal_bpp, 6), "target_bpp": target}
    return row | values


def evaluate_image(
    sample: Sample,
    codec,
    rates: list,
    classic: dict[str, ClassicCodec],
    downscales: list[int],
    state: EvalState,
    keep: bool,
    sheet_codec: str | None,
) -> None:
    """All rows for one image: OSCAR at each rate, then each codec at each OSCAR bpp."""
    ref = sample.image
    h, w = ref.shape[:2]
    targets: dict[int, float] = {}
    if keep:
        state.originals[sample.name] = center_crop(ref, SHEET_CROP)
    for rate in rates:
        t0 = time.perf_counter()
        stream = codec.compress([ref], rate.index)[0]
        t1 = time.perf_counter()
        decoded = codec.decompress([stream])[0]
        t2 = time.perf_counter()
        state.seconds["oscar"] += t2 - t0
        bpp = 8 * len(stream) / (h * w)
        targets[rate.index] = bpp
        scores = state.score(ref, decoded)
        state.rows.append(
            make_row(sample, "oscar", "oscar", rate, bpp, bpp=bpp, bytes=len(stream))
            | {"quality": rate.index, "reached": True, **scores}
            | {"enc_ms": 1000 * (t1 - t0), "dec_ms": 1000 * (t2 - t1)}
        )
        if keep:
            state.crops[(sample.name, rate.index, "oscar")] = (
                center_crop(decoded, SHEET_CROP),
                state.rows[-1],
            )
    ranking = quality_key([METRICS[n].column for n in state.metrics])
    for name, cc in classic.items():
        tables: dict[int, QualityTable] = {}
        memo: dict[tuple[int, int], tuple[dict, float, np.ndarray]] = {}
        low = cc.q_min + LOW_SETTING * (cc.q_max - cc.q_min)  # settings at or below: low
        for rate in rates:
            target = targets[rate.index]
            last: float | None = None  # the key score of the last variant that reached
            for scale in [1, *downscales]:
                t0 = time.perf_counter()
                if scale not in tables:
                    tables[scale] = QualityTable(cc, ref, scale)
                table = tables[scale]
                hit = table.search(target)
                state.seconds["search"] += time.perf_counter() - t0
                if hit is None:  # cannot reach: report the lowest setting, no metrics
                    lowest = table.get(cc.q_min)
                    state.rows.append(
                        make_row(sample, table.name, name, rate, target, bpp=lowest.bpp)
                        | {"bytes": len(lowest.data), "quality": lowest.quality}
                        | {"reached": False, "enc_ms": lowest.enc_ms, "dec_ms": math.nan}
                    )
                    continue
                key = (scale, hit.quality)
                if key not in memo:
                    t0 = time.perf_counter()
                    decoded, dec_ms = table.decode(hit.quality)
                    state.seconds["search"] += time.perf_counter() - t0
                    memo[key] = (
                        state.score(ref, decoded),
                        dec_ms,
                        center_crop(decoded, SHEET_CROP),
                    )
                scores, dec_ms, crop = memo[key]
                state.rows.append(
                    make_row(sample, table.name, name, rate, target, bpp=hit.bpp)
                    | {"bytes": len(hit.data), "quality": hit.quality, "reached": True, **scores}
                    | {"enc_ms": hit.enc_ms, "dec_ms": dec_ms}
                )
                if keep and name == sheet_codec:
                    state.crops[(sample.name, rate.index, table.name)] = (crop, state.rows[-1])
                if ranking is None:
                    break  # no metric to compare variants by: the first that reaches
                score = scores[ranking]  # higher is better (``quality_key``)
                if (last is not None and score <= last) or hit.quality > low:
                    break  # smaller stopped helping, or a high setting: smaller won't
                last = score
