"""Multi-process training: 2 CPU processes (gloo) on a tiny run stay in sync.

Each spawned rank runs the whole stage plan and writes a checksum of its model after every
stage; rank 0's and rank 1's must be identical (averaged gradients, broadcast buffers and
fit results), while the crops each rank trained on differ (per-rank seeds). Only rank 0
writes the run directory's files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import jobs.train.trainer
from jobs.train.config import StageConfig, TrainConfig
from jobs.train.dist import init_distributed, launch
from jobs.train.losses import Stage2Loss
from jobs.train.trainer import Trainer
from oscar_core import OscarModel
from tests.jobs.train.test_train import tiny_run


def checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordingTrainer(Trainer):
    """A Trainer that notes its model's checksum after each stage and its crop caches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sums: dict[str, str] = {}
        self.crops: dict[str, float] = {}

    def run_stage(self, name, cfg, params, step_fn, *fast):
        finished = super().run_stage(name, cfg, params, step_fn, *fast)
        self.sums[name] = checksum(self.model)
        if hasattr(step_fn, "disc"):
            self.sums["disc"] = checksum(step_fn.disc)
        return finished

    def _latent_cache(self, sampler, n, crop, tag):
        x, z0 = super()._latent_cache(sampler, n, crop, tag)
        self.crops[f"{tag}-{crop}"] = float(x.float().sum())
        return x, z0


class EarlyGanLoss(Stage2Loss):
    """Stage 2's loss with the GAN term from step 0 (the trainer's own weights kept)."""

    def __init__(self, *args, weights: dict | None = None, **kwargs):
        super().__init__(*args, weights={**(weights or {}), "adv_start": 0}, **kwargs)


def rank_main(cfg: TrainConfig) -> None:
    """One rank (in a spawned process): train, then write what it holds."""
    torch.set_num_threads(1)
    # The GAN term from step 0 (not 200), so the discriminator's own sync is exercised.
    jobs.train.trainer.Stage2Loss = EarlyGanLoss
    ctx, _ = init_distributed(cfg.device)
    trainer = RecordingTrainer(cfg, ctx)
    finished = trainer.run()
    record = {"finished": finished, "sums": trainer.sums, "crops": trainer.crops,
              "final": checksum(trainer.model), "ladder": trainer.model.config.ladder}  # fmt: skip
    (Path(cfg.out).parent / f"rank{ctx.rank}.json").write_text(json.dumps(record))
    ctx.close()


def test_two_processes_stay_in_sync(tmp_path):
    cfg = tiny_run(tmp_path, steps=2)
    cfg.stage2 = StageConfig(3, 2, 64, 1e-4)
    launch(rank_main, cfg, nproc=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["finished"] and r1["finished"]
    assert set(r0["sums"]) == {"stage0", "stage1", "stage2", "disc"}
    assert r0["sums"] == r1["sums"] and r0["final"] == r1["final"]
    assert r0["ladder"] == r1["ladder"]  # the fit's t_r came from rank 0 to both
    assert r0["crops"]["train-128"] != r1["crops"]["train-128"]  # each rank its own crops
    assert "held-256" not in r1["crops"]  # the fit ran on rank 0 only
    saved = OscarModel.from_pretrained(tmp_path / "run" / "model")
    assert checksum(saved) == r1["final"]  # what rank 0 wrote is what rank 1 holds
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["ranks"] == 2
    assert not list((tmp_path / "run" / "ckpt").glob("*rank*"))
