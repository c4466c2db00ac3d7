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
        finished = Trainer(cfg, ctx).run()
        msg = "training finished" if finished else "training paused (time limit); re-run to resume"
        if ctx.is_main:
            print(msg)
        return finished
    finally:
        log.removeHandler(handler)
        handler.close()
        ctx.close()
