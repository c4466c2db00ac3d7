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
    # every trial: ladder index -> (stream bytes, achieved value); reports use it to price
    # the alternative of one rate for all images without coding them again
    tried: dict[int, tuple[int, float]]


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
        outcomes = {r: (len(s), value) for r, (s, value) in sorted(tried[i].items())}
        out.append(
            TargetResult(
                stream, rates[lo[i]], achieved, len(tried[i]), target.met_by(achieved), outcomes
            )
        )
    return out


@dataclass(frozen=True)
class Outcome:
    """What a report needs of one targeted image (from a ``TargetResult`` or a Parquet row)."""

    rate_index: int  # the chosen rate
    met: bool
    tried: dict[int, tuple[int, float]]  # ladder index -> (stream bytes, achieved value)
    pixels: int  # width * height


@dataclass(frozen=True)
class SingleRate:
    """The alternative users would otherwise pick: one rate for all images, the lowest that
    meets the target for every image that can meet it (the highest rate chosen among them;
    the top rate when none can)."""

    rate_index: int
    bytes: int  # all images at that rate
    estimated: int  # images never tried at that rate: their bytes estimated (see below)


def single_rate_alternative(outcomes: Sequence[Outcome]) -> SingleRate | None:
    """Price ``SingleRate`` from the trials alone, without coding again: exact for an image
    whose search tried that rate (at least one did: it is some image's chosen rate). For
    another, its own bytes at a rate it tried, times the ratio of bytes between that rate and
    the single rate over the images that tried both (the tried rate with the most such
    images, the nearer on a tie): an image's size tracks its content across rates far better
    than the mean bpp of the (harder) images that tried the single rate."""
    if not outcomes:
        return None
    met = [o.rate_index for o in outcomes if o.met]
    rate = max(met) if met else max(o.rate_index for o in outcomes)
    total, estimated = 0.0, 0
    for o in outcomes:
        if rate in o.tried:
            total += o.tried[rate][0]
            continue
        estimated += 1
        best = None  # (peers, -distance, rate tried)
        for r in o.tried:
            peers = [p for p in outcomes if r in p.tried and rate in p.tried]
            key = (len(peers), -abs(r - rate), r)
            if peers and (best is None or key > best[0]):
                best = (key, peers)
        if best is not None:
            (_, _, r), peers = best
            ratio = sum(p.tried[rate][0] for p in peers) / max(1, sum(p.tried[r][0] for p in peers))
            total += o.tried[r][0] * ratio
        else:  # no image tried both: the mean bpp at the single rate
            known = [p for p in outcomes if rate in p.tried]
            bpp = sum(8 * p.tried[rate][0] for p in known) / sum(p.pixels for p in known)
            total += bpp * o.pixels / 8
    return SingleRate(rate, round(total), estimated)


@dataclass(frozen=True)
class TargetSummary:
    """A targeted job in numbers: what ``oscar compress --target`` prints and the shard
    jobs' report holds."""

    target: str
    images: int
    met: int
    rates: dict[int, int]  # chosen ladder index -> images
    mean_trials: float
    bytes: int  # the chosen streams
    single_rate: SingleRate | None

    @classmethod
    def of(cls, target: Target | str, outcomes: Sequence[Outcome]) -> TargetSummary:
        rates: dict[int, int] = defaultdict(int)
        for o in outcomes:
            rates[o.rate_index] += 1
        n = len(outcomes)
        return cls(
            target=str(target),
            images=n,
            met=sum(o.met for o in outcomes),
            rates=dict(sorted(rates.items())),
            mean_trials=sum(len(o.tried) for o in outcomes) / n if n else 0.0,
            bytes=sum(o.tried[o.rate_index][0] for o in outcomes),
            single_rate=single_rate_alternative(outcomes),
        )

    @property
    def saving(self) -> float | None:
        """Fraction of the single-rate bytes saved by choosing per image."""
        if self.single_rate is None or self.single_rate.bytes == 0:
            return None
        return 1 - self.bytes / self.single_rate.bytes

    def to_dict(self) -> dict:
        single = self.single_rate
        return {
            "target": self.target,
            "images": self.images,
            "met": self.met,
            "rates": {str(k): v for k, v in self.rates.items()},
            "mean_trials": round(self.mean_trials, 3),
            "bytes": self.bytes,
            "single_rate": None
            if single is None
            else {
                "rate_index": single.rate_index,
                "bytes": single.bytes,
                "estimated": single.estimated,
            },
            "saving": None if self.saving is None else round(self.saving, 4),
        }

    def line(self) -> str:
        """One line for a terminal."""
        rates = ", ".join(f"rate {k}: {v}" for k, v in self.rates.items())
        text = (
            f"target {self.target}: {self.met}/{self.images} met ({rates}), "
            f"{self.mean_trials:.2f} trials/image, {self.bytes} bytes"
        )
        if self.single_rate is not None and self.saving is not None:
            text += (
                f" vs {self.single_rate.bytes} at one rate for all (rate "
                f"{self.single_rate.rate_index}): {100 * self.saving:.1f}% saved"
            )
        return text


def outcome_of(result: TargetResult, pixels: int) -> Outcome:
    return Outcome(result.rate.index, result.met, result.tried, pixels)
