"""Shared pieces of ``oscar bench``: the run context, result rows, and the small helpers
several sections use (``encode_each``, ``mean_psnr``, the images); timing is ``timing.py``.

A section is a function ``section_<name>(ctx) -> SectionResult``: the summary row
(``title``, ``status``, ``measured``, ``goal``, and ``shortfall`` / ``reason`` when missed),
the headline ``figures`` (all positive), the ``tables`` of bench.md and the section's own
numbers (``details``), which bench.json holds beside the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.common.images import IMAGE_EXTENSIONS
from oscar_core.images import center_crop
from oscar_core.metrics import psnr

QUICK_CROP = 256  # --quick: one image, centre-cropped to this side


@dataclass
class BenchContext:
    """What every section gets: the model, the images, the rates and the run settings."""

    model_dir: Path
    codec: Any  # oscar_core.Codec (imported lazily)
    images: list[np.ndarray]  # (H, W, 3) uint8
    image_names: list[str]
    rates: list[int]  # rate indices profiled (section 2, 7)
    repeats: int
    warmup: int
    quick: bool
    threads: int
    batch_sizes: tuple[int, ...]
    work_dir: Path  # scratch space (shards, Parquets), removed after the run
    cache: dict[str, Any] = field(default_factory=dict)  # results shared between sections
    # precisions compared side by side in sections 2 and 3; the first is the reference
    # (``codec``'s own, fp32 by default); ``precision_note`` says why one was left out
    precisions: tuple[str, ...] = ("fp32",)
    precision_note: str | None = None

    def codec_for(self, precision: str) -> Any:
        """A Codec sharing ``codec``'s model (same weights, device, batch size) that runs at
        ``precision``; cached, so every section times the same object."""
        if precision == self.codec.precision:
            return self.codec
        codecs = self.cache.setdefault("codecs", {})
        if precision not in codecs:
            c = self.codec
            codecs[precision] = type(c)(
                c.model, device=c.device, batch_size=c.batch_size, precision=precision
            )
        return codecs[precision]

    @property
    def sample_rates(self) -> list[int]:
        """The expensive sections (1, 3) run at the lowest and highest profiled rate."""
        return sorted({self.rates[0], self.rates[-1]})


def parse_precisions(text: str | None) -> tuple[tuple[str, ...], str | None]:
    """--precision "fp32,bf16" -> (precisions, note). Default: fp32, and bf16 when this CPU
    has native bf16 (else a note saying why not). An explicit bf16 the CPU lacks raises."""
    import torch

    from oscar_core.precision import PRECISIONS, resolve_precision

    if text is None:
        try:
            resolve_precision("bf16", torch.device("cpu"))
        except ValueError as exc:
            return ("fp32",), f"bf16 not measured: {exc}"
        return ("fp32", "bf16"), None
    wanted = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    if not wanted or any(v not in PRECISIONS for v in wanted):
        raise ValueError(f'Invalid precision "{text}", should be a list of {PRECISIONS}')
    for v in wanted:
        resolve_precision(v, torch.device("cpu"))  # ValueError: no native bf16 here
    return wanted, None


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if isinstance(value, int) or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.0f}"
    return f"{value:.{digits}g}"


@dataclass(frozen=True)
class Table:
    """A table of bench.md: cells already formatted (``fmt``)."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def table(title: str, headers: list[str], rows: list[list[Any]]) -> Table:
    return Table(title, headers, [[fmt(c) for c in r] for r in rows])


def verdict(ok: bool) -> str:
    return "pass" if ok else "miss"


@dataclass
class SectionResult:
    """What one section found: its summary row, figures, tables and own numbers."""

    title: str
    status: str  # pass / miss / info / not run: <why> / error: <exception>
    measured: str | None = None  # short text for the summary row
    goal: str | None = None
    shortfall: str | None = None  # when missed: by how much
    reason: str | None = None  # when missed: why, from what was measured
    figures: dict[str, float] = field(default_factory=dict)  # headline numbers, all > 0
    tables: list[Table] = field(default_factory=list)  # bench.md only
    method: str | None = None  # how it was measured (bench.md and bench.json)
    note: str | None = None
    todo: str | None = None  # not run: what is left to measure
    traceback: str | None = None  # error: where it was raised
    details: dict[str, Any] = field(default_factory=dict)  # per rate, per run, ... (JSON)
    footnotes: list[str] = field(default_factory=list)  # lines under the tables, bench.md only
    section: int = 0  # its number in ``jobs.bench.job.SECTIONS`` (set by the runner)
    seconds: float = 0.0  # its wall time (set by the runner)

    @classmethod
    def judged(cls, ok: bool, shortfall: str, **fields: Any) -> SectionResult:
        """A section with a goal: status pass/miss from ``ok``; ``shortfall`` kept on a miss."""
        return cls(status=verdict(ok), shortfall=None if ok else shortfall, **fields)

    def to_json(self) -> dict[str, Any]:
        """bench.json's entry: every field but the tables and footnotes, the details
        inline, the optional texts only when set."""
        out: dict[str, Any] = {
            "title": self.title,
            "status": self.status,
            "measured": self.measured,
            "goal": self.goal,
            "shortfall": self.shortfall,
            "reason": self.reason,
        }
        for key in ("method", "note", "todo", "traceback"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return (
            out
            | self.details
            | {
                "figures": self.figures,
                "section": self.section,
                "seconds": self.seconds,
            }
        )


def not_run(title: str, goal: str, why: str, todo: str) -> SectionResult:
    """A section that could not run: never a number, always the reason and what is left."""
    return SectionResult(title=title, status=f"not run: {why}", goal=goal, todo=todo)


def load_images(directory: Path, quick: bool) -> tuple[list[np.ndarray], list[str]]:
    """RGB arrays of every image in ``directory`` (sorted); --quick: the first one, cropped
    to 256x256. Portrait images among landscape ones (or the reverse) are turned by 90
    degrees, then images of different sizes are centre-cropped to the smallest common size."""
    from PIL import Image

    from oscar_core.images import to_rgb_array

    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"{directory}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if quick:
        paths = paths[:1]
    images, names = [], []
    for path in paths:
        with Image.open(path) as img:
            img.load()
            arr = to_rgb_array(img)
        if quick:
            arr = center_crop(arr, QUICK_CROP)
        images.append(arr)
        names.append(path.name)
    # Batches need one size: a portrait photo among landscape ones (Kodak: 6 of 24) is
    # turned by 90 degrees, then mixed sizes are centre-cropped to the smallest common one.
    landscape = sum(a.shape[1] >= a.shape[0] for a in images) * 2 >= len(images)
    images = [np.rot90(a).copy() if (a.shape[1] >= a.shape[0]) != landscape else a for a in images]
    h = min(a.shape[0] for a in images)
    w = min(a.shape[1] for a in images)
    if any(a.shape[:2] != (h, w) for a in images):
        images = [center_crop(a, h, w) for a in images]
    return images, names


def cycle_batches(images: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """Every image once, in batches of ``batch``; the last batch is filled up by cycling
    from the start, so every batch is full (``len(images) < batch`` repeats images)."""
    n = math.ceil(len(images) / batch) * batch
    items = [images[i % len(images)] for i in range(n)]
    return [items[i : i + batch] for i in range(0, n, batch)]


def encode_each(codec: Any, images: list[np.ndarray], rate: int) -> list[bytes]:
    """One bitstream per image, each compressed alone (batch 1, as the timed decodes)."""
    return [codec.compress([img], rate)[0] for img in images]


def mean_psnr(originals: list[np.ndarray], decoded: list[np.ndarray]) -> float | None:
    """Mean PSNR (``oscar_core.metrics.psnr``, the project's one) over the image pairs, in
    dB; None for no images."""
    vals = [psnr(a, b) for a, b in zip(originals, decoded, strict=True)]
    return float(np.mean(vals)) if vals else None
