"""What ``oscar bench`` writes: bench.json (every figure, the machine, the settings) and
bench.md (the summary table, then each section's tables), and the machine facts both record.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from jobs.bench.common import SectionResult
from jobs.common.paths import REPO


@dataclass
class BenchRun:
    """One ``oscar bench`` run: what it measured on, and each section's result. The nested
    dicts are bench.json's sub-documents as written (``machine_info``, ...)."""

    quick: bool
    date: str  # UTC, ISO 8601, at the start
    finished: str
    machine: dict[str, Any]  # machine_info()
    load_average: dict[str, list[float]]  # {"start": [1, 5, 15 min], "end": [...]}
    git: dict[str, Any] | None  # git_state()
    argv: list[str]
    model: dict[str, Any]  # dir, name, model_id, notes
    images: dict[str, Any]  # dir, names, sizes [[w, h]], quick_crop
    settings: dict[str, Any]  # rates, repeats, warmup, batch sizes, threads, precisions
    sections: list[SectionResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "oscar bench",
            **{k: v for k, v in vars(self).items() if k != "sections"},
            "sections": [r.to_json() for r in self.sections],
        }


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


def git_state() -> dict[str, Any] | None:
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


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def to_markdown(result: BenchRun) -> str:
    m, s = result.machine, result.settings
    v = m["versions"]
    lines = ["# OSCAR benchmark", ""]
    if result.quick:
        lines += [
            "> **QUICK MODE** (1 image centre-cropped to 256x256, "
            f"{s['repeats']} repeats, {len(s['rates'])} rate): a smoke test of the benchmark, "
            "not results.",
            "",
        ]
    load, model, images = result.load_average, result.model, result.images
    notes = model["notes"] or {}
    lines += _md_table(
        ["", ""],
        [
            ["date (UTC)", result.date],
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
                f"{model['name']} {model['model_id']}"
                + (f" ({'; '.join(f'{k}: {x}' for k, x in notes.items())})" if notes else ""),
            ],
            [
                "images",
                f"{len(images['names'])} from {images['dir']}, "
                + ", ".join(f"{w}x{h}" for w, h in images["sizes"][:1])
                + (" (cropped)" if result.quick else ""),
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
                (result.git or {}).get("commit", "-")
                + (" (dirty)" if (result.git or {}).get("dirty") else ""),
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
            [r.section, r.title, r.measured, r.goal, r.status, r.shortfall, r.reason]
            for r in result.sections
        ],
    )
    for r in result.sections:
        lines += ["", f"## {r.section}. {r.title}", ""]
        lines.append(f"**{r.status}**. Goal: {r.goal or '-'}.")
        for key, text in (("Method", r.method), ("Note", r.note), ("Todo", r.todo)):
            if text:
                lines += ["", f"{key}: {text}"]
        if r.traceback:
            lines += ["", "```", r.traceback.rstrip(), "```"]
        for t in r.tables:
            lines += ["", f"{t.title}:", ""]
            lines += _md_table(t.headers, t.rows)
        for line in r.footnotes:
            lines += ["", line]
    return "\n".join(lines) + "\n"


def write_outputs(result: BenchRun, out: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(_clean(result.to_json()), indent=2, allow_nan=False) + "\n")
    md_path.write_text(to_markdown(result))
    return json_path, md_path
