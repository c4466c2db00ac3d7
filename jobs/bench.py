"""``oscar bench``: timed benchmarks of the codec and the pipeline -> bench.json + bench.md.

    oscar bench [--quick] [--model DIR] [--out docs/benchmarks] [--images DIR]
                [--sections 1,2,3,...] [--rates 0,3,7] [--repeats N] [--threads N]
                [--precision fp32,bf16]

Sections (one function each, returning a dict; see ``bench_common`` for its keys):

    1  one step vs a 50-step DDIM decode of the same bitstreams   (bench_codec)
    2  stage profile per rate, batch size and precision           (bench_profile)
    3  oscar vs bmshj2018-hyperprior and Pillow JPEG/WebP/AVIF     (bench_peer)
    4  encode-shards vs the bare model in the same worker          (bench_pipeline)
    5  1 vs 2 CPU actors through Ray + projected images/s per GPU  (bench_scaling)
    6  peak RSS of a worker for shards of 100 vs 1,000 images      (bench_pipeline)
    7  range-coded vs fixed-length bits of the VQ indices per rate (bench_codec)
    8  storage.open_read vs boto3 get_object on the local radosgw  (bench_s3)

Every figure is the median of ``--repeats`` runs after a warm-up run; every comparison runs
both sides in this process with the same torch threads, under ``torch.inference_mode()``.
Sections 2 and 3 time every precision of ``--precision`` (default: fp32, plus bf16 autocast
where the CPU has native bf16) side by side; the others run at the first one (fp32).
A section that fails is recorded as ``error: ...`` and the others still run. ``--quick``
is a smoke test (1 image centre-cropped to 256x256, 2 repeats, 1 rate, batches 1 and 2):
its numbers check the machinery, they are not results.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = Path(__file__).parent / "samples"
DEFAULT_OUT = "docs/benchmarks"
# number -> (module, function)
SECTIONS: dict[int, tuple[str, str]] = {
    1: ("jobs.bench_codec", "section_one_vs_many"),
    2: ("jobs.bench_profile", "section_stage_profile"),
    3: ("jobs.bench_peer", "section_peers"),
    4: ("jobs.bench_pipeline", "section_efficiency"),
    5: ("jobs.bench_scaling", "section_scaling"),
    6: ("jobs.bench_pipeline", "section_memory"),
    7: ("jobs.bench_codec", "section_entropy_gain"),
    8: ("jobs.bench_s3", "section_s3"),
}
FULL = {"repeats": 3, "warmup": 1, "batch_sizes": (1, 2, 4)}  # fits 15 min on 2 cores
QUICK = {"repeats": 2, "warmup": 1, "batch_sizes": (1, 2)}


def parse_sections(text: str | None) -> list[int]:
    if not text or text.strip().lower() == "all":
        return sorted(SECTIONS)
    try:
        wanted = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f'Invalid sections "{text}", should be numbers like 1,2,7') from None
    bad = [s for s in wanted if s not in SECTIONS]
    if bad or not wanted:
        raise ValueError(f'Invalid sections "{text}", should be among {sorted(SECTIONS)}')
    return wanted


def parse_rates(text: str | None, ladder, quick: bool) -> list[int]:
    """--rates "0,3,7" / "all"; default: every rate, or the middle one with --quick."""
    if not text:
        return [(len(ladder) - 1) // 2] if quick else [r.index for r in ladder]
    if text.strip().lower() == "all":
        return [r.index for r in ladder]
    return sorted({ladder.resolve(v.strip()).index for v in text.split(",") if v.strip()})


# --------------------------------------------------------------------------- metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any] | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO
        )
    except OSError:
        return None
    if rev.returncode:
        return None
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            d: _version(d)
            for d in ("torch", "compressai", "diffusers", "numpy", "pillow", "ray", "boto3")
        },
    }


# --------------------------------------------------------------------------- running


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _first_line(text: str, limit: int = 300) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_section(number: int, ctx) -> dict[str, Any]:
    import torch

    module, name = SECTIONS[number]
    t0 = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(module), name)
        with torch.inference_mode():
            result = fn(ctx)
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        result = {
            "title": name.removeprefix("section_").replace("_", " "),
            "status": f"error: {type(exc).__name__}: {_first_line(str(exc))}",
            "measured": None,
            "goal": None,
            "shortfall": None,
            "reason": None,
            "traceback": traceback.format_exc(limit=8),
            "figures": {},
            "tables": [],
        }
    result["section"] = number
    result["seconds"] = time.perf_counter() - t0
    return result


def run_bench(
    *,
    model: str | Path | None = None,
    images: str | Path | None = None,
    sections: list[int] | None = None,
    quick: bool = False,
    rates: str | None = None,
    repeats: int | None = None,
    threads: int | None = None,
    precision: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the chosen sections; returns the whole result (what bench.json holds + tables)."""
    import torch

    from oscar_core import DEFAULT_MODEL_DIR, Codec

    from .bench_common import BenchContext, load_images, parse_precisions

    if threads is not None:
        if threads < 1:
            raise ValueError(f'Invalid threads "{threads}", should be >= 1')
        torch.set_num_threads(threads)
    mode = QUICK if quick else FULL
    if repeats is not None and repeats < 1:
        raise ValueError(f'Invalid repeats "{repeats}", should be >= 1')
    precisions, precision_note = parse_precisions(precision)
    model_dir = Path(model or DEFAULT_MODEL_DIR)
    codec = Codec.from_pretrained(model_dir, precision=precisions[0])
    arrays, names = load_images(Path(images or DEFAULT_IMAGES), quick)
    sections = sections or sorted(SECTIONS)
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="oscar-bench-"))
    ctx = BenchContext(
        model_dir=model_dir,
        codec=codec,
        images=arrays,
        image_names=names,
        rates=parse_rates(rates, codec.ladder, quick),
        repeats=repeats or mode["repeats"],
        warmup=mode["warmup"],
        quick=quick,
        threads=torch.get_num_threads(),
        batch_sizes=mode["batch_sizes"],
        work_dir=work,
        precisions=precisions,
        precision_note=precision_note,
    )
    results = []
    try:
        for number in sections:
            log(f"bench: section {number} ({SECTIONS[number][1]}) ...")
            res = run_section(number, ctx)
            log(f"bench: section {number}: {res['status']} in {res['seconds']:.1f}s")
            results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cfg = codec.model.config
    return {
        "benchmark": "oscar bench",
        "quick": quick,
        "date": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "git": _git(),
        "argv": list(sys.argv),
        "model": {
            "dir": str(model_dir),
            "name": cfg.name,
            "model_id": codec.model_id.hex(),
            "notes": cfg.notes,
        },
        "images": {
            "dir": str(images or DEFAULT_IMAGES),
            "names": names,
            "sizes": [[a.shape[1], a.shape[0]] for a in arrays],
            "quick_crop": quick,
        },
        "settings": {
            "rates": ctx.rates,
            "sample_rates": ctx.sample_rates,
            "repeats": ctx.repeats,
            "warmup": ctx.warmup,
            "batch_sizes": list(ctx.batch_sizes),
            "torch_threads": ctx.threads,
            "precisions": list(ctx.precisions),
            "precision_note": ctx.precision_note,
            "statistic": "median",
        },
        "sections": results,
    }


# --------------------------------------------------------------------------- writing


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    v = m["versions"]
    lines = ["# OSCAR benchmark", ""]
    if result["quick"]:
        lines += [
            "> **QUICK MODE** (1 image centre-cropped to 256x256, "
            f"{s['repeats']} repeats, {len(s['rates'])} rate): a smoke test of the benchmark, "
            "not results.",
            "",
        ]
    load = result["load_average"]
    notes = result["model"]["notes"] or {}
    lines += _md_table(
        ["", ""],
        [
            ["date (UTC)", result["date"]],
            [
                "machine",
                f"{m['cpu_model']}, {m['cpu_cores']} cores ({m['cpu_cores_usable']} usable)",
            ],
            ["torch threads", f"{m['torch_threads']} (interop {m['torch_interop_threads']})"],
            [
                "versions",
                f"torch {v['torch']}, compressai {v['compressai']}, diffusers {v['diffusers']}, "
                f"numpy {v['numpy']}, Pillow {v['pillow']}, ray {v['ray']}",
            ],
            [
                "model",
                f"{result['model']['name']} {result['model']['model_id']}"
                + (f" ({'; '.join(f'{k}: {x}' for k, x in notes.items())})" if notes else ""),
            ],
            [
                "images",
                f"{len(result['images']['names'])} from {result['images']['dir']}, "
                + ", ".join(f"{w}x{h}" for w, h in result["images"]["sizes"][:1])
                + (" (cropped)" if result["quick"] else ""),
            ],
            ["rates", ", ".join(str(r) for r in s["rates"])],
            ["timing", f"median of {s['repeats']} runs after {s['warmup']} warm-up run"],
            [
                "precisions (sections 2, 3)",
                ", ".join(s.get("precisions", ["fp32"]))
                + (f" ({s['precision_note']})" if s.get("precision_note") else ""),
            ],
            [
                "load average (1 min)",
                f"{load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end",
            ],
            [
                "git",
                (result["git"] or {}).get("commit", "-")
                + (" (dirty)" if (result["git"] or {}).get("dirty") else ""),
            ],
        ],
    )
    if (
        load["start"][0] > (m["cpu_cores_usable"] or 1) * 0.5
        or load["end"][0] > (m["cpu_cores_usable"] or 1) * 0.5
    ):
        lines += [
            "",
            "> The machine was busy (load average above half the cores): timings are noisy.",
        ]
    lines += ["", "## Summary", ""]
    lines += _md_table(
        ["#", "section", "measured", "goal", "result", "short by", "profiled reason"],
        [
            [r["section"], r["title"], r.get("measured"), r.get("goal"), r["status"]]
            + [r.get("shortfall"), r.get("reason")]
            for r in result["sections"]
        ],
    )
    for r in result["sections"]:
        lines += ["", f"## {r['section']}. {r['title']}", ""]
        lines.append(f"**{r['status']}**. Goal: {r.get('goal') or '-'}.")
        for key in ("method", "note", "todo"):
            if r.get(key):
                lines += ["", f"{key.capitalize()}: {r[key]}"]
        if r.get("traceback"):
            lines += ["", "```", r["traceback"].rstrip(), "```"]
        for t in r.get("tables", []):
            lines += ["", f"{t['title']}:", ""]
            lines += _md_table(t["headers"], t["rows"])
        if r.get("gpu_projection"):
            lines += ["", f"Projection assumptions: {r['gpu_projection']['assumptions']}"]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(result)
    data["sections"] = [{k: v for k, v in r.items() if k != "tables"} for r in result["sections"]]
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    md_path.write_text(to_markdown(result))
    return json_path, md_path


def main_bench(args) -> int:
    """The ``oscar bench`` handler (argparse namespace from jobs/cli.py)."""
    sections = parse_sections(args.sections)
    result = run_bench(
        model=args.model,
        images=args.images,
        sections=sections,
        quick=args.quick,
        rates=args.rates,
        repeats=args.repeats,
        threads=args.threads,
        precision=getattr(args, "precision", None),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    json_path, md_path = write_outputs(result, args.out)
    width = max(len(r["title"]) for r in result["sections"])
    for r in result["sections"]:
        print(f"{r['section']}. {r['title']:<{width}}  {r['status']}  {r.get('measured') or ''}")
    print(f"wrote {json_path} and {md_path}")
    return 0
