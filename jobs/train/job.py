"""``oscar train``: the training job in one process, in ``nproc`` local processes, or as one
rank of a torchrun launch. The stage plan itself is ``trainer.py``.

    run(TrainConfig(...), nproc=None) -> 0   (the model in <out>/model once every stage is
                                              done; a paused run says so and resumes on a
                                              re-run of the same command)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from jobs.train.config import TrainConfig
from jobs.train.dist import init_distributed, launch
from jobs.train.trainer import Trainer

log = logging.getLogger("oscar.train")


def run(config: TrainConfig, nproc: int | None = None) -> int:
    """One process, ``nproc`` local processes, or this rank of torchrun's."""
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        launch(train_process, config, nproc)  # each process runs train_process(config)
    else:
        train_process(config)
    return 0


def train_process(cfg: TrainConfig) -> bool:
    """Train in this process: alone, or as the rank the environment names (torchrun)."""
    ctx, device = init_distributed(cfg.device)
    cfg = dataclasses.replace(cfg, device=device)
    handler = logging.NullHandler()
    if ctx.is_main:  # only rank 0 logs to the run directory
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(cfg.out) / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        trainer = Trainer(cfg, ctx)
        finished = trainer.run()
        msg = "training finished" if finished else "training paused (time limit); re-run to resume"
        if ctx.is_main:
            print(msg)
            if finished:
                for line in stage_lines(trainer.summary):
                    print(line)
                print(
                    f"model: {Path(cfg.out) / 'model'}, summary: {Path(cfg.out) / 'summary.json'}"
                )
        return finished
    finally:
        log.removeHandler(handler)
        handler.close()
        ctx.close()


def stage_lines(summary: dict) -> list[str]:
    """One line per stage that trained: steps, wall time, steps/s, the final losses."""
    lines = []
    for name in ("stage0", "stage1", "stage2", "stage3"):
        if name not in summary:
            continue
        s = summary[name]
        rate = s["steps"] / max(s["wall_s"], 1e-9)
        losses = ", ".join(f"{k} {v:.4g}" for k, v in s.get("final_losses", {}).items())
        lines.append(
            f"  {name}: {s['steps']} steps in {s['wall_s']:.0f} s ({rate:.2f}/s); {losses}"
        )
    if "budget" in summary:
        b = summary["budget"]
        lines.append(f"  budget: {b['spent_s']:.0f} s of {b['minutes'] * 60:.0f} s")
    return lines
