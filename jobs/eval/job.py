"""``oscar eval``: OSCAR against classic codecs at matched bpp, per image and per rate.

For every image and every requested ladder rate, OSCAR compresses and decompresses the
image (bpp from the real bitstream bytes); then each classic codec is searched for the
quality whose bpp is the closest NOT ABOVE OSCAR's bpp on that image (so a codec never
wins by spending more bits). A codec that cannot go that low at its lowest quality is
reported "cannot reach" (reached=False, bpp = its lowest); smaller variants, the image
downscaled 2x, 4x, 8x, 16x (Lanczos) and upscaled back for measuring (``avif@1/2``, ...),
are tried while the larger one cannot reach or reaches only at a low setting, until one
scores worse than the one before (``compare.py``). Per rate, OSCAR is paired with one codec's
best variant per image ("OSCAR vs AVIF") and with the best of all ("the best rival").

Outputs in ``--out``: results.csv (one row per image x codec/variant x rate), summary.json,
summary.md (means per rate, "OSCAR vs AVIF"), rd.png (rate-distortion curves per metric),
contact_sheet.png (crops: original | OSCAR | AVIF's best variant). One image's rows are
``compare.py``, the codec adapters and the quality search ``codecs.py``, the metrics
``metrics.py``, the means per rate ``summary.py``, the figures ``plots.py``; see
docs/eval.md.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs.common.images import find_images
from jobs.eval.codecs import select_codecs
from jobs.eval.compare import EvalState, evaluate_image, load_samples
from jobs.eval.metrics import DEFAULT_METRICS, METRICS, build_metrics
from jobs.eval.plots import contact_sheet, plot_rd
from jobs.eval.summary import summarize, summary_markdown

DEFAULT_DOWNSCALES = (2, 4, 8, 16)
SHEET_IMAGES = 3  # the first images get crops on the contact sheet
NOT_AVAILABLE_NOTES = [
    "dists: not supported (its weights come from the internet, unavailable here)",
]


@dataclass
class EvalConfig:
    """What ``oscar eval`` compares; the lists are comma-separated, as on the command line."""

    images: list[str]  # image files or directories (their images, not recursive)
    out: str  # results directory
    model: str | None = None  # model directory (None: the shipped oscar-tiny)
    rates: str | None = None  # ladder indices or bpp, e.g. "0,3,7" (None: every rate)
    codecs: str | None = None  # e.g. "jpeg,avif" (None: every codec that works here)
    metrics: str | None = None  # e.g. "psnr,ms-ssim" (None: DEFAULT_METRICS)
    limit: int | None = None  # the first N images only
    lpips_weights: str | None = None  # local AlexNet / LPIPS weights (adds "lpips")
    downscales: str | None = None  # smaller variants, "2,4" (None: DEFAULT_DOWNSCALES)
    threads: int | None = None  # torch CPU threads


@dataclass
class EvalInfo:
    """What a run compared: the head of summary.json (its keys, in this order)."""

    model: str  # the model directory as given, or "shipped"
    model_id: str  # hex
    images: list[str]  # sample names (file stems, or paths where stems repeat)
    errors: list[str]  # inputs that could not be read, one line each
    rates: list[dict]  # Rate.to_dict() of every rate evaluated
    codecs: dict[str, dict]  # name -> quality range and fixed settings
    downscales: list[int]
    metrics: dict[str, dict]  # name -> MetricSpec fields
    notes: list[str]  # codecs / metrics skipped and why
    sheet_codec: str | None  # the codec on the contact sheet (and in "OSCAR vs ...")


def split_list(text: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None stays None (use the default)."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def resolve_rates(ladder, text: str | None) -> list:
    """The ladder's rates named in ``text`` ("0,3,7", indices or bpp), sorted, each once;
    None or empty: every rate."""
    wanted = split_list(text)
    indices = sorted({ladder.resolve(r).index for r in wanted}) if wanted else None
    return [ladder[i] for i in indices] if indices else list(ladder)


def run(config: EvalConfig) -> int:
    """The job: validate everything first, evaluate image by image, write the outputs.

    Returns 0, or 2 when some inputs were unreadable (the others are still evaluated, each
    bad one is one ``oscar: error:`` line). ValueError for unusable arguments.
    """
    import torch

    from oscar_core import Codec

    t_start = time.perf_counter()
    # 1. Validate: arguments, image paths, codecs, metrics, model, rates, images
    if config.limit is not None and config.limit < 1:
        raise ValueError(f'Invalid limit "{config.limit}", should be >= 1')
    try:
        scales = [int(s) for s in split_list(config.downscales) or []]
    except ValueError:
        raise ValueError(f'Invalid downscales "{config.downscales}", should be like 2,4') from None
    scales = scales if config.downscales is not None else list(DEFAULT_DOWNSCALES)
    if any(s < 2 for s in scales):
        raise ValueError(f'Invalid downscales "{config.downscales}", each should be >= 2')
    paths, errors = find_images(config.images, config.limit)
    if not paths:
        raise ValueError(f"no images in {' '.join(config.images)}")
    classic, notes = select_codecs(split_list(config.codecs))
    metric_names = split_list(config.metrics) or list(DEFAULT_METRICS)
    if config.lpips_weights and "lpips" not in metric_names:
        metric_names.append("lpips")
    if "lpips" not in metric_names:
        notes.append("lpips: skipped (no --lpips-weights given; weights cannot be downloaded)")
    notes += NOT_AVAILABLE_NOTES
    metric_fns = build_metrics(metric_names, config.lpips_weights)
    if config.threads:
        torch.set_num_threads(config.threads)
    codec = Codec.from_pretrained(config.model, batch_size=1)
    rate_list = resolve_rates(codec.ladder, config.rates)
    samples, load_errors = load_samples(paths)
    errors += load_errors
    for err in errors:
        print(f"oscar: error: {err}", file=sys.stderr)
    if not samples:
        raise ValueError("no readable images")
    out_dir = Path(config.out)
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
    info = EvalInfo(
        model=str(config.model or "shipped"),
        model_id=codec.model_id.hex(),
        images=[s.name for s in samples],
        errors=errors,
        rates=[r.to_dict() for r in rate_list],
        codecs={n: {"q_min": c.q_min, "q_max": c.q_max, **c.options} for n, c in classic.items()},
        downscales=scales,
        metrics={n: METRICS[n].__dict__ for n in metric_fns},
        notes=notes,
        sheet_codec=sheet_codec,
    )
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


def write_outputs(out_dir: Path, state: EvalState, info: EvalInfo) -> None:
    """results.csv, summary.json, summary.md, rd.png, contact_sheet.png."""
    names = list(info.metrics)
    columns = [METRICS[n].column for n in names]
    write_csv(out_dir / "results.csv", state.rows, columns)
    summary = summarize(state.rows, names, info.sheet_codec)
    n = len(info.images)
    for key in ("oscar", "search", "metrics"):  # present even with no codec / no metric
        state.seconds[key] += 0.0
    timing = {k: round(v, 3) for k, v in state.seconds.items()}
    timing["per_image_s"] = round(state.seconds["images"] / n, 3)
    write_json(out_dir / "summary.json", asdict(info) | {"timing_s": timing, "per_rate": summary})
    header = [
        f"Model `{info.model}` ({info.model_id[:16]}), {n} images, "
        f"{timing['per_image_s']:.1f} s per image ({timing['total']:.0f} s in all: OSCAR "
        f"{timing['oscar']:.0f} s, codec search {timing['search']:.0f} s, metrics "
        f"{timing['metrics']:.0f} s).",
        "",
        "Classic codecs: closest bpp NOT ABOVE OSCAR's on each image; `@1/k`: the image "
        "downscaled k times (Lanczos), upscaled back for measuring; a smaller variant is "
        "tried where the larger cannot reach or reaches only at a low setting, until one "
        "scores worse. Means over the images that reached (`reached`).",
        "",
        *[f"- {note}" for note in info.notes + info.errors],
    ]
    (out_dir / "summary.md").write_text(summary_markdown(summary, names, header))
    plot_rd(out_dir / "rd.png", summary, names, n)
    contact_sheet(out_dir / "contact_sheet.png", state, info.sheet_codec, columns)
