"""Quality-targeted encoding: for each image, the lowest ladder rate whose decoded image
meets a target such as ``psnr>=30``, ``ms-ssim>=0.95`` or ``ssimulacra2>=60``.

Search: a binary search over the ladder (rates in index order, bpp increasing). Quality is
taken to be monotone in the rate, so each trial halves the candidates: with 8 rates an image
needs 3 trials (encode + decode + metric), 4 when it reaches the top rate without having
met the target at a lower one (the top rate is then tried once more to measure it). An image
that cannot meet the target even at the top rate gets the top rate, ``met = False``: it is
marked, not failed. Where quality is not monotone in the rate (rare, between neighbouring
rates), the search may return a rate that meets the target while a lower one also would:
never a rate that misses it while a higher one meets it, unless the top rate misses.

Trials are batched: in each round, images that try the same rate are coded in one
``Codec.compress`` / ``decompress`` call (same-size images share model calls). The achieved
value is measured on the decoded image of that trial; a later decode in another batch
composition may differ by one 8-bit level in a few pixels (``oscar_core.codec``).

Decode needs nothing new: the rate is in each stream's header.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .codec import Codec
from .images import rgb_arrays
from .ladder import Rate
from .metrics import METRICS

_TARGET = re.compile(r"^\s*([a-z0-9-]+)\s*>=\s*(\S+)\s*$")


@dataclass(frozen=True)
class Target:
    """``metric >= value``; every metric in ``METRICS`` is higher-is-better."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(
                f'Invalid target metric "{self.metric}", should be one of {sorted(METRICS)}'
            )
        if not math.isfinite(self.value):
            raise ValueError(f'Invalid target value "{self.value}", should be a finite number')

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"psnr>=30"`` -> Target("psnr", 30.0); ValueError naming the text otherwise."""
        m = _TARGET.match(text.lower())
        if not m:
            raise ValueError(
                f'Invalid target "{text}", should be METRIC>=VALUE with METRIC one of '
                f"{sorted(METRICS)}, e.g. psnr>=30"
            )
        try:
            value = float(m.group(2))
        except ValueError:
            raise ValueError(f'Invalid target "{text}": "{m.group(2)}" is not a number') from None
        return cls(m.group(1), value)

    def __str__(self) -> str:
        return f"{self.metric}>={self.value:g}"

    def measure(self, ref: np.ndarray, test: np.ndarray) -> float:
        return float(METRICS[self.metric](ref, test))

    def met_by(self, achieved: float) -> bool:
        return achieved >= self.value  # NaN (e.g. MS-SSIM of a tiny image) never meets


@dataclass(frozen=True)
class TargetResult:
    """The chosen stream of one image and how it was found."""

    stream: bytes
    rate: Rate
    achieved: float  # the target metric of the chosen stream's decoded image
    trials: int  # rates tried (each an encode + decode + metric)
    met: bool  # False: the top rate, and even it misses the target


def compress_to_target(
    codec: Codec, images: Sequence[Image.Image | np.ndarray], target: Target
) -> list[TargetResult]:
    """One ``TargetResult`` per image, in input order (see the module docstring)."""
    arrays = rgb_arrays(images)  # all inputs checked before any work
    rates = list(codec.ladder)
    n = len(arrays)
    lo, hi = [0] * n, [len(rates) - 1] * n
    tried: list[dict[int, tuple[bytes, float]]] = [{} for _ in range(n)]  # rate -> outcome

    def run_round(wanted: dict[int, int]) -> None:
        """Code image i at rate wanted[i], batched by rate."""
        by_rate: dict[int, list[int]] = defaultdict(list)
        for i, r in wanted.items():
            by_rate[r].append(i)
        for r, members in by_rate.items():
            streams = codec.compress([arrays[i] for i in members], rates[r])
            decoded = codec.decompress(streams)
            for i, stream, image in zip(members, streams, decoded, strict=True):
                tried[i][r] = (stream, target.measure(arrays[i], image))

    while True:  # binary search, all images in step
        wanted = {i: (lo[i] + hi[i]) // 2 for i in range(n) if lo[i] < hi[i]}
        if not wanted:
            break
        run_round(wanted)
        for i, mid in wanted.items():
            if target.met_by(tried[i][mid][1]):
                hi[i] = mid
            else:
                lo[i] = mid + 1
    run_round({i: lo[i] for i in range(n) if lo[i] not in tried[i]})  # the untried top rate

    out = []
    for i in range(n):
        stream, achieved = tried[i][lo[i]]
        out.append(
            TargetResult(stream, rates[lo[i]], achieved, len(tried[i]), target.met_by(achieved))
        )
    return out
