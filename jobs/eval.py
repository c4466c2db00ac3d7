"""``oscar eval``: OSCAR against classic codecs at matched bpp, per image and per rate.

For every image and every requested ladder rate, OSCAR compresses and decompresses the
image (bpp from the real bitstream bytes); then each classic codec is searched for the
quality whose bpp is the closest NOT ABOVE OSCAR's bpp on that image (so a codec never
wins by spending more bits). A codec that cannot go that low at its lowest quality is
reported "cannot reach" (reached=False, bpp = its lowest) and then also tried on the image
downscaled 2x and 4x (Lanczos), upscaled back for measuring (``avif@1/2``, ``avif@1/4``).

Outputs in ``--out``: results.csv (one row per image x codec/variant x rate), summary.json,
summary.md (means per rate, "OSCAR vs AVIF"), rd.png (rate-distortion curves per metric),
contact_sheet.png (crops: original | OSCAR | AVIF's best variant). The codec adapters and
the quality search are in ``jobs/eval_codecs.py``, metrics and summaries in
``jobs/eval_metrics.py``, the figures in ``jobs/eval_plots.py``; see docs/eval.md.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.eval_codecs import ClassicCodec, QualityTable, select_codecs
from jobs.eval_metrics import (
    DEFAULT_METRICS,
    METRICS,
    Metric,
    build_metrics,
    summarize,
    summary_markdown,
)
from jobs.eval_plots import _caption, _pyplot, contact_sheet, plot_rd  # noqa: F401 - moved there
from oscar_core.images import center_crop

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
DEFAULT_DOWNSCALES = (2, 4)
SHEET_IMAGES, SHEET_CROP = 3, 256
NOT_AVAILABLE_NOTES = [
    "dists: not supported (its weights come from the internet, unavailable here)",
]


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


def split_list(text: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None stays None (use the default)."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def find_images(inputs: list[str], limit: int | None = None) -> tuple[list[Path], list[str]]:
    """Files (as given) and directories (their images, sorted, not recursive) -> paths, errors."""
    paths, errors = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                errors.append(f"{item}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            errors.append(f"{item}: no such file or directory")
    return (paths[:limit] if limit else paths), errors


def load_samples(paths: list[Path]) -> tuple[list[Sample], list[str]]:
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
    for name, cc in classic.items():
        tables: dict[int, QualityTable] = {}
        memo: dict[tuple[int, int], tuple[dict, float, np.ndarray]] = {}
        for rate in rates:
            target = targets[rate.index]
            for scale in [1, *downscales]:
                t0 = time.perf_counter()
                if scale not in tables:
                    tables[scale] = QualityTable(cc, ref, scale)
                table = tables[scale]
                hit = table.search(target)
                state.seconds["search"] += time.perf_counter() - t0
                if hit is None:  # cannot reach: report the lowest setting, no metrics
                    low = table.get(cc.q_min)
                    state.rows.append(
                        make_row(sample, table.name, name, rate, target, bpp=low.bpp)
                        | {"bytes": len(low.data), "quality": low.quality, "reached": False}
                        | {"enc_ms": low.enc_ms, "dec_ms": math.nan}
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
                if scale == 1:
                    break  # the full-size image reached the point: no downscaled variants


def run_eval(
    images: list[str],
    model: str | None,
    out: str,
    rates: str | None = None,
    codecs: str | None = None,
    metrics: str | None = None,
    limit: int | None = None,
    lpips_weights: str | None = None,
    downscales: str | None = None,
    threads: int | None = None,
) -> int:
    """The job: validate everything first, evaluate image by image, write the outputs.

    Returns 0, or 2 when some inputs were unreadable (the others are still evaluated, each
    bad one is one ``oscar: error:`` line). ValueError for unusable arguments.
    """
    import torch

    from oscar_core import Codec

    t_start = time.perf_counter()
    # 1. Validate: arguments, image paths, codecs, metrics, model, rates, images
    if limit is not None and limit < 1:
        raise ValueError(f'Invalid limit "{limit}", should be >= 1')
    try:
        scales = [int(s) for s in split_list(downscales) or []]
    except ValueError:
        raise ValueError(f'Invalid downscales "{downscales}", should be like 2,4') from None
    scales = scales if downscales is not None else list(DEFAULT_DOWNSCALES)
    if any(s < 2 for s in scales):
        raise ValueError(f'Invalid downscales "{downscales}", each should be >= 2')
    paths, errors = find_images(images, limit)
    if not paths:
        raise ValueError(f"no images in {' '.join(images)}")
    classic, notes = select_codecs(split_list(codecs))
    metric_names = split_list(metrics) or list(DEFAULT_METRICS)
    if lpips_weights and "lpips" not in metric_names:
        metric_names.append("lpips")
    if "lpips" not in metric_names:
        notes.append("lpips: skipped (no --lpips-weights given; weights cannot be downloaded)")
    notes += NOT_AVAILABLE_NOTES
    metric_fns = build_metrics(metric_names, lpips_weights)
    if threads:
        torch.set_num_threads(threads)
    codec = Codec.from_pretrained(model, batch_size=1)
    wanted = split_list(rates)
    indices = sorted({codec.ladder.resolve(r).index for r in wanted}) if wanted else None
    rate_list = [codec.ladder[i] for i in indices] if indices else list(codec.ladder)
    samples, load_errors = load_samples(paths)
    errors += load_errors
    for err in errors:
        print(f"oscar: error: {err}", file=sys.stderr)
    if not samples:
        raise ValueError("no readable images")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet_codec = "avif" if "avif" in classic else next(iter(classic), None)

    # 2. Evaluate, image by image
    state = EvalState(metric_fns)
    print(
        f"eval: {len(samples)} images, rates {[r.index for r in rate_list]}, "
        f"codecs {list(classic)}, metrics {list(metric_fns)}"
    )
    for i, sample in enumerate(samples):
        t0 = time.perf_counter()
        keep = i < SHEET_IMAGES
        evaluate_image(sample, codec, rate_list, classic, scales, state, keep, sheet_codec)
        state.seconds["images"] += time.perf_counter() - t0
        print(f"  [{i + 1}/{len(samples)}] {sample.name}: {time.perf_counter() - t0:.1f} s")

    # 3. Outputs
    info = {
        "model": str(model or "shipped"),
        "model_id": codec.model_id.hex(),
        "images": [s.name for s in samples],
        "errors": errors,
        "rates": [r.to_dict() for r in rate_list],
        "codecs": {
            n: {"q_min": c.q_min, "q_max": c.q_max, **c.options} for n, c in classic.items()
        },
        "downscales": scales,
        "metrics": {n: METRICS[n].__dict__ for n in metric_fns},
        "notes": notes,
        "sheet_codec": sheet_codec,
    }
    state.seconds["total"] = time.perf_counter() - t_start
    write_outputs(out_dir, state, info)
    print(f"outputs in {out_dir.resolve()}")
    return 2 if errors else 0


def write_csv(path: Path, rows: list[dict], metric_columns: list[str]) -> None:
    """One row per image x variant x rate; NaN (cannot reach: no metrics) -> empty cell."""
    base = ["image", "width", "height", "codec", "variant", "rate", "nominal_bpp"]
    base += ["target_bpp", "bpp", "bytes", "quality", "reached"]
    columns = base + metric_columns + ["enc_ms", "dec_ms"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            cells = {}
            for c in columns:
                v = row.get(c, math.nan)
                cells[c] = "" if isinstance(v, float) and math.isnan(v) else v
            writer.writerow(cells)


def write_json(path: Path, data: dict) -> None:
    def clean(v):  # NaN is not JSON: null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    path.write_text(json.dumps(clean(data), indent=2))


def write_outputs(out_dir: Path, state: EvalState, info: dict) -> None:
    """results.csv, summary.json, summary.md, rd.png, contact_sheet.png."""
    names = list(info["metrics"])
    columns = [METRICS[n].column for n in names]
    write_csv(out_dir / "results.csv", state.rows, columns)
    summary = summarize(state.rows, names, info["sheet_codec"])
    n = len(info["images"])
    for key in ("oscar", "search", "metrics"):  # present even with no codec / no metric
        state.seconds[key] += 0.0
    timing = {k: round(v, 3) for k, v in state.seconds.items()}
    timing["per_image_s"] = round(state.seconds["images"] / n, 3)
    write_json(out_dir / "summary.json", info | {"timing_s": timing, "per_rate": summary})
    header = [
        f"Model `{info['model']}` ({info['model_id'][:16]}), {n} images, "
        f"{timing['per_image_s']:.1f} s per image ({timing['total']:.0f} s in all: OSCAR "
        f"{timing['oscar']:.0f} s, codec search {timing['search']:.0f} s, metrics "
        f"{timing['metrics']:.0f} s).",
        "",
        "Classic codecs: closest bpp NOT ABOVE OSCAR's on each image; `@1/k`: the image "
        "downscaled k times (Lanczos), upscaled back for measuring; tried only where the "
        "full-size codec cannot reach. Means over the images that reached (`reached`).",
        "",
        *[f"- {note}" for note in info["notes"] + info["errors"]],
    ]
    (out_dir / "summary.md").write_text(summary_markdown(summary, names, header))
    plot_rd(out_dir / "rd.png", summary, names, n)
    contact_sheet(out_dir / "contact_sheet.png", state, info, columns)
