"""The rate ladder: which (ss, K) and pseudo-timestep t_r each bit-rate uses.

OSCAR serves every rate with one denoiser; a rate is a hyper-encoder operating point
(VQ spatial size ``ss`` on a 512 px image, codebook size ``K``) plus the diffusion timestep
``t_r`` at which its decoded latent z~ is treated as a noisy state x_t.

Nominal bpp is resolution independent: a 512x512 image gives an ss x ss grid of codes, each
log2(K) bits, so ``bpp = ss^2 * log2(K) / 512^2``. Per side, the hyper-encoder downsamples
z0 (already 1/8 of the image) by ``64 / ss``; the codes sit at ``ss / 512`` of the image.

Reference table (Guo et al. 2025, see shared OSCAR notes); low rate = large t:

    index   0       1        2       3        4       5       6       7
    bpp     0.0019  0.0098   0.0313  0.0430   0.0625  0.0781  0.0937  0.1250
    (ss,K)  (8,256) (16,1024)(32,256)(32,2048)(64,16) (64,32) (64,64) (64,256)
    t       500     400      310     280      210     190     170     150
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """One operating point of the ladder."""

    index: int  # position on the ladder, 0 = lowest rate
    ss: int  # VQ spatial size for a 512 px side (8, 16, 32 or 64)
    K: int  # codebook size
    t: int  # pseudo-timestep t_r in [0, 1000)

    @property
    def bits_per_code(self) -> float:
        return math.log2(self.K)

    @property
    def nominal_bpp(self) -> float:
        return self.ss**2 * self.bits_per_code / 512**2

    @property
    def downsample(self) -> int:
        """Per-side downsampling of z0 by the hyper-encoder (1, 2, 4 or 8)."""
        return 64 // self.ss

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "nominal_bpp": round(self.nominal_bpp, 6),
            "ss": self.ss,
            "K": self.K,
            "t": self.t,
        }


REFERENCE_LADDER: tuple[tuple[int, int, int], ...] = (
    # (ss, K, t) from the reference; t is refitted by training (stored in config.json)
    (8, 256, 500),
    (16, 1024, 400),
    (32, 256, 310),
    (32, 2048, 280),
    (64, 16, 210),
    (64, 32, 190),
    (64, 64, 170),
    (64, 256, 150),
)

_VALID_SS = (8, 16, 32, 64)


class RateLadder:
    """An ordered set of rates, addressable by index or by nominal bpp."""

    def __init__(self, entries: Sequence[Sequence[int]]):
        if not entries:
            raise ValueError("a rate ladder needs at least one rate")
        if len(entries) > 16:
            raise ValueError(f"a rate ladder holds at most 16 rates, got {len(entries)}")
        rates = []
        for i, entry in enumerate(entries):
            ss, K, t = (int(v) for v in entry)
            if ss not in _VALID_SS:
                raise ValueError(f'Invalid ss "{ss}" for rate {i}, should be one of {_VALID_SS}')
            if not 2 <= K <= 32768:
                raise ValueError(
                    f'Invalid codebook size "{K}" for rate {i}, should be in [2, 32768]'
                )
            if not 0 <= t < 1000:
                raise ValueError(f'Invalid timestep "{t}" for rate {i}, should be in [0, 1000)')
            rates.append(Rate(i, ss, K, t))
        bpps = [r.nominal_bpp for r in rates]
        if any(hi <= lo for lo, hi in zip(bpps, bpps[1:], strict=False)):
            raise ValueError(f"rates must be ordered by increasing bpp, got {bpps}")
        self.rates: tuple[Rate, ...] = tuple(rates)

    def __len__(self) -> int:
        return len(self.rates)

    def __iter__(self):
        return iter(self.rates)

    def __getitem__(self, index: int) -> Rate:
        return self.rates[index]

    def to_list(self) -> list[list[int]]:
        return [[r.ss, r.K, r.t] for r in self.rates]

    def with_timesteps(self, timesteps: Sequence[int]) -> RateLadder:
        """The same ladder with refitted pseudo-timesteps (one per rate)."""
        if len(timesteps) != len(self):
            raise ValueError(f"need {len(self)} timesteps, got {len(timesteps)}")
        return RateLadder([(r.ss, r.K, int(t)) for r, t in zip(self.rates, timesteps, strict=True)])

    def resolve(self, rate: int | float | str | Rate) -> Rate:
        """Find a rate by ladder index (int), nominal bpp (float) or CLI text.

        Text holding a '.' is read as bpp ("0.0313"), otherwise as an index ("2"). A bpp
        matches when it equals a rate's nominal bpp to the 4 decimals the table prints.
        """
        if isinstance(rate, Rate):
            rate = rate.index
        if isinstance(rate, str):
            text = rate.strip()
            try:
                rate = float(text) if "." in text or "e" in text.lower() else int(text)
            except ValueError:
                raise ValueError(
                    f'Invalid rate "{text}", should be a ladder index 0..{len(self) - 1} '
                    "or a nominal bpp like 0.0313"
                ) from None
        if isinstance(rate, bool):
            raise ValueError(f'Invalid rate "{rate}"')
        if isinstance(rate, int):
            if not 0 <= rate < len(self):
                raise ValueError(
                    f'Invalid rate index "{rate}", should be between (0, {len(self) - 1})'
                )
            return self.rates[rate]
        if isinstance(rate, float):
            # the paper labels its rates with 4 decimals, rounded inconsistently (0.0019 for
            # 0.001953, 0.0313 for 0.03125): accept anything within 3% of a nominal bpp (the
            # closest two rates are 20% apart)
            best = min(self.rates, key=lambda r: abs(r.nominal_bpp - rate))
            if abs(best.nominal_bpp - rate) <= 0.03 * best.nominal_bpp:
                return best
            known = ", ".join(f"{r.nominal_bpp:.5f}" for r in self.rates)
            raise ValueError(f'Unknown rate "{rate}" bpp, the ladder has {known}')
        raise ValueError(f'Invalid rate "{rate!r}": expected an index or a bpp')

    def at_most(self, bpp: float) -> Rate:
        """The highest rate whose nominal bpp does not exceed ``bpp``."""
        fitting = [r for r in self.rates if r.nominal_bpp <= bpp + 1e-9]
        if not fitting:
            raise ValueError(
                f'Target "{bpp}" bpp is below the lowest rate ({self.rates[0].nominal_bpp:.4f} bpp)'
            )
        return fitting[-1]
