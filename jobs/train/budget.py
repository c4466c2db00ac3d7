"""A wall-clock budget for a whole training run (``TrainConfig.minutes``, ``--minutes N``).

With a budget, a stage does not run a fixed number of steps: it runs for its share of the
time that is left when it starts, and its learning-rate schedule follows the clock (the same
warm-up and cosine as ``trainer.py``'s step schedule, over elapsed/allotted time instead of
step/steps). So the same recipe uses what a machine gives it: a GPU does many large-batch
steps in N minutes, a CPU a few, and both finish the schedule on time.

    allotted(stage) = left x share(stage) / sum(shares of the stages still to run)
    left            = minutes x 60 x (1 - TAIL_RESERVE) - seconds already spent by the run

A stage with ``steps == 0`` is not run and takes no share (the steps of the others are not
used). What happens between the stages (loading data, the latent caches, the t_r fit) is
paid from ``left``: the next stage's allotment is what remains. ``TAIL_RESERVE`` keeps time
for the pmf refit and writing the model after the last stage. A resumed stage keeps the
allotment it started with (stored in its checkpoint), and the seconds spent by earlier
invocations are carried in summary.json (``budget.spent_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STAGES = ("stage0", "stage1", "stage2", "stage3")
TAIL_RESERVE = 0.05  # of the budget: pmf refit, merging and writing the model
WARM_FRACTION = 0.02  # of a stage's time: linear learning-rate warm-up (as the step schedule)


def check_shares(shares: dict[str, float]) -> dict[str, float]:
    """``budget_shares``: a non-negative weight per stage name, at least one positive."""
    unknown = set(shares) - set(STAGES)
    if unknown:
        raise ValueError(f"budget_shares: unknown stages {sorted(unknown)} (stages: {STAGES})")
    if any(not isinstance(v, int | float) or v < 0 for v in shares.values()):
        raise ValueError(f"budget_shares {shares}: each share should be a number >= 0")
    return shares


@dataclass
class TimeBudget:
    """The run's budget: ``minutes`` in all, split between the stages that run."""

    minutes: float
    shares: dict[str, float]  # stage -> weight (normalised over the stages still to run)
    spent_before: float = 0.0  # seconds spent by earlier invocations of the run

    def __post_init__(self):
        if not (isinstance(self.minutes, int | float) and self.minutes > 0):
            raise ValueError(f'Invalid minutes "{self.minutes}", should be > 0')
        check_shares(self.shares)

    def allot(self, stage: str, to_run: list[str], spent_now: float) -> float:
        """Seconds for ``stage``, the first of ``to_run`` (stages still to run, in order),
        given ``spent_now`` seconds spent by this invocation so far. At least 1 s: a stage
        that starts always takes at least one step."""
        left = self.minutes * 60 * (1 - TAIL_RESERVE) - self.spent_before - spent_now
        total = sum(self.shares.get(s, 0.0) for s in to_run)
        share = self.shares.get(stage, 0.0) / total if total > 0 else 1.0 / len(to_run)
        return max(1.0, left * share)


def lr_factor_at(progress: float) -> float:
    """The learning-rate factor at ``progress`` (0..1) of a stage's time: a linear warm-up
    over WARM_FRACTION, then a cosine from 1 down to 0.05 (``trainer.py``'s step schedule)."""
    p = min(max(progress, 0.0), 1.0)
    if p < WARM_FRACTION:
        return max(p / WARM_FRACTION, 1e-3)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (p - WARM_FRACTION) / (1 - WARM_FRACTION)))
