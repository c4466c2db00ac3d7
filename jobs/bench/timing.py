"""How ``oscar bench`` times things: ``measure(fn) -> Timing``, and ``ms`` for table cells.

``measure(fn)`` runs ``fn`` ``warmup`` times untimed, then ``repeats`` times timed
with ``time.perf_counter``, and reports the median (and min / max). Every figure of the
benchmark is such a median; a per-image figure is the median of a run over all images
divided by their count.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Seconds of ``repeats`` timed runs after ``warmup`` untimed ones."""

    median: float
    min: float
    max: float
    repeats: int

    def per(self, n: int) -> float:
        """Median seconds per item when one run processed ``n`` items."""
        return self.median / max(1, n)

    def to_dict(self, n: int = 1) -> dict[str, float | int]:
        return {
            "median_s": self.median / n,
            "min_s": self.min / n,
            "max_s": self.max / n,
            "repeats": self.repeats,
        }


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1:
        raise ValueError(f'Invalid repeats "{repeats}", should be >= 1')
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def ms(seconds: float | None) -> float | None:
    """Seconds -> milliseconds to 3 decimals (a table cell); None stays None."""
    return None if seconds is None else round(1000 * seconds, 3)
