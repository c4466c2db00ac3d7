"""``oscar bench``: timed benchmarks of the codec and the pipeline -> bench.json + bench.md.

    oscar bench [--quick] [--model DIR] [--out docs/benchmarks] [--images DIR]
                [--sections 1,2,3,...] [--rates 0,3,7] [--repeats N] [--threads N]
                [--precision fp32,bf16]

Sections (one module each, a function ``ctx -> SectionResult``; see ``common.py``):

    1  one step vs a 50-step DDIM decode of the same bitstreams   (one_step.py)
    2  stage profile per rate, batch size and precision           (stage_profile.py)
    3  oscar vs bmshj2018-hyperprior and Pillow JPEG/WebP/AVIF     (peers.py)
    4  encode-shards vs the bare model in the same worker          (efficiency.py)
    5  1 vs 2 CPU actors through Ray + projected images/s per GPU  (scaling.py)
    6  peak RSS of a worker for shards of 100 vs 1,000 images      (memory.py)
    7  range-coded vs fixed-length bits of the VQ indices per rate (entropy.py)
    8  storage.open_read vs boto3 get_object on the local radosgw  (s3.py)
    9  decode-shards peak RSS and local disk, 100 vs 1,000 images  (decode_memory.py)
   10  quality targets vs one fixed rate                           (targets.py)
   11  decode-on-read vs PNG files                                 (archive_read.py)
   12  peak RSS of 1-64 MP images in tiles; seam PSNR             (large_images.py)

Every figure is the median of ``--repeats`` runs after a warm-up run; every comparison runs
both sides in this process with the same torch threads, under ``torch.inference_mode()``.
Sections 2 and 3 time every precision of ``--precision`` (default: fp32, plus bf16 autocast
where the CPU has native bf16) side by side; the others run at the first one (fp32).
A section that fails is recorded as ``error: ...`` and the others still run. ``--quick``
is a smoke test (1 image centre-cropped to 256x256, 2 repeats, 1 rate, batches 1 and 2):
its numbers check the machinery, they are not results. The files: ``report.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.bench.archive_read import section_archive_read
from jobs.bench.common import BenchContext, SectionResult, load_images, parse_precisions
from jobs.bench.decode_memory import section_decode_memory
from jobs.bench.efficiency import section_efficiency
from jobs.bench.entropy import section_entropy_gain
from jobs.bench.large_images import section_large_images
from jobs.bench.memory import section_memory
from jobs.bench.one_step import section_one_vs_many
from jobs.bench.peers import section_peers
from jobs.bench.report import BenchRun, git_state, machine_info, write_outputs
from jobs.bench.s3 import section_s3
from jobs.bench.scaling import section_scaling
from jobs.bench.stage_profile import section_stage_profile
from jobs.bench.targets import section_targets
from jobs.common.paths import SAMPLES_DIR

DEFAULT_OUT = "docs/benchmarks"
# number -> the section's function
SECTIONS: dict[int, Callable[[BenchContext], SectionResult]] = {
    1: section_one_vs_many,
    2: section_stage_profile,
    3: section_peers,
    4: section_efficiency,
    5: section_scaling,
    6: section_memory,
    7: section_entropy_gain,
    8: section_s3,
    9: section_decode_memory,
    10: section_targets,
    11: section_archive_read,
    12: section_large_images,
}
FULL = {"repeats": 3, "warmup": 1, "batch_sizes": (1, 2, 4)}  # fits 15 min on 2 cores
QUICK = {"repeats": 2, "warmup": 1, "batch_sizes": (1, 2)}


@dataclass
class BenchConfig:
    """What ``oscar bench`` measures, and where it writes bench.json and bench.md."""

    out: str = DEFAULT_OUT
    model: str | None = None  # model directory (None: the shipped oscar-tiny)
    images: str | None = None  # a directory of images (None: jobs/samples)
    sections: list[int] | None = None  # section numbers (None: all, 1..12)
    quick: bool = False  # smoke test: 1 image cropped to 256 px, 1 rate, 2 repeats
    rates: str | None = None  # "0,3,7" or "all" (None: all; --quick: the middle one)
    repeats: int | None = None  # timed runs per figure (None: 3, --quick 2)
    threads: int | None = None  # torch CPU threads
    precision: str | None = None  # "fp32,bf16" (None: fp32, plus bf16 where the CPU has it)


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


def _first_line(text: str, limit: int = 300) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_section(number: int, ctx: BenchContext) -> SectionResult:
    import torch

    fn = SECTIONS[number]
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            result = fn(ctx)
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        result = SectionResult(
            title=fn.__name__.removeprefix("section_").replace("_", " "),
            status=f"error: {type(exc).__name__}: {_first_line(str(exc))}",
            traceback=traceback.format_exc(limit=8),
        )
    result.section = number
    result.seconds = time.perf_counter() - t0
    return result


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> BenchRun:
    """Run the chosen sections; the whole result (what bench.json and bench.md hold)."""
    import torch

    from oscar_core import DEFAULT_MODEL_DIR, Codec

    # 1. Check the settings, load the model and the images
    if config.threads is not None:
        if config.threads < 1:
            raise ValueError(f'Invalid threads "{config.threads}", should be >= 1')
        torch.set_num_threads(config.threads)
    mode = QUICK if config.quick else FULL
    if config.repeats is not None and config.repeats < 1:
        raise ValueError(f'Invalid repeats "{config.repeats}", should be >= 1')
    precisions, precision_note = parse_precisions(config.precision)
    model_dir = Path(config.model or DEFAULT_MODEL_DIR)
    codec = Codec.from_pretrained(model_dir, precision=precisions[0])
    arrays, names = load_images(Path(config.images or SAMPLES_DIR), config.quick)
    sections = config.sections or sorted(SECTIONS)
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="oscar-bench-"))
    ctx = BenchContext(
        model_dir=model_dir,
        codec=codec,
        images=arrays,
        image_names=names,
        rates=parse_rates(config.rates, codec.ladder, config.quick),
        repeats=config.repeats or mode["repeats"],
        warmup=mode["warmup"],
        quick=config.quick,
        threads=torch.get_num_threads(),
        batch_sizes=mode["batch_sizes"],
        work_dir=work,
        precisions=precisions,
        precision_note=precision_note,
    )
    # 2. Run the sections, one after the other
    results = []
    try:
        for number in sections:
            log(f"bench: section {number} ({SECTIONS[number].__name__}) ...")
            res = run_section(number, ctx)
            log(f"bench: section {number}: {res.status} in {res.seconds:.1f}s")
            results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # 3. The result, with what it was measured on
    cfg = codec.model.config
    return BenchRun(
        quick=config.quick,
        date=started.isoformat(timespec="seconds"),
        finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        load_average={"start": list(load_start), "end": list(os.getloadavg())},
        git=git_state(),
        argv=list(sys.argv),
        model={
            "dir": str(model_dir),
            "name": cfg.name,
            "model_id": codec.model_id.hex(),
            "notes": cfg.notes,
        },
        images={
            "dir": str(config.images or SAMPLES_DIR),
            "names": names,
            "sizes": [[a.shape[1], a.shape[0]] for a in arrays],
            "quick_crop": config.quick,
        },
        settings={
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
        sections=results,
    )


def run(config: BenchConfig) -> int:
    """``oscar bench``: run, write bench.json + bench.md, print one line per section."""
    result = run_bench(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    json_path, md_path = write_outputs(result, config.out)
    width = max(len(r.title) for r in result.sections)
    for r in result.sections:
        print(f"{r.section}. {r.title:<{width}}  {r.status}  {r.measured or ''}")
    print(f"wrote {json_path} and {md_path}")
    return 0
