"""A wall-clock budget for training (``jobs/train/budget.py``): the split between stages, the
schedule on the clock, and the GPU recipe (``configs/gpu_tiny.json``) run as a user runs it,
on CPU with a budget of seconds, from nothing but the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli.main import main as cli_main
from jobs.train.budget import TAIL_RESERVE, TimeBudget, check_shares, lr_factor_at
from oscar_core import Codec
from tests.conftest import smooth_image

ROOT = Path(__file__).parents[3]
RECIPE = ROOT / "jobs" / "train" / "configs" / "gpu_tiny.json"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # --threads 1 sets torch's count


def test_allotment_is_the_share_of_what_is_left():
    budget = TimeBudget(10, {"stage0": 1, "stage1": 1, "stage2": 2})
    usable = 600 * (1 - TAIL_RESERVE)
    assert budget.allot("stage0", ["stage0", "stage1", "stage2"], 0) == pytest.approx(usable / 4)
    # stage 0 skipped (a trained base): its share goes to the others; time spent is paid
    assert budget.allot("stage1", ["stage1", "stage2"], 30) == pytest.approx((usable - 30) / 3)
    # a stage without a share among stages that have none: an equal split
    assert budget.allot("stage3", ["stage3"], 0) == pytest.approx(usable)
    resumed = TimeBudget(10, {"stage2": 1}, spent_before=560)
    assert resumed.allot("stage2", ["stage2"], 60) == 1.0  # overspent: still one step


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="stage9"):
        check_shares({"stage9": 1})
    with pytest.raises(ValueError, match=">= 0"):
        check_shares({"stage0": -1})
    with pytest.raises(ValueError, match="minutes"):
        TimeBudget(0, {})


def test_schedule_on_the_clock_warms_up_then_decays():
    assert lr_factor_at(0.0) < 0.01 and lr_factor_at(0.02) == pytest.approx(1.0)
    assert lr_factor_at(0.5) == pytest.approx(0.05 + 0.95 * 0.5, abs=0.02)
    assert lr_factor_at(1.0) == pytest.approx(0.05) and lr_factor_at(3.0) == pytest.approx(0.05)
    values = [lr_factor_at(p / 100) for p in range(2, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_gpu_recipe_runs_on_cpu_within_its_budget(tmp_path, capsys):
    recipe = json.loads(RECIPE.read_text())
    assert recipe["device"] == "cuda" and recipe["cuda_bf16"] and recipe["minutes"] > 0
    assert Path(ROOT / recipe["data"]).is_dir() and Path(ROOT / recipe["base"]).is_dir()
    # the recipe as it is, but for batches a CPU holds (stage 0's 64 x 256 px: ~20 GB here)
    for stage in ("stage0", "stage1", "stage2"):
        recipe[stage] |= {"batch": 2, "crop": 128}
    recipe |= {"cache_crops": 16, "fit_crops": 8}  # latents the CPU encodes before stage 1
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps(recipe))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--device", "cpu", "--minutes", "0.4"]
    args += ["--data", str(ROOT / recipe["data"]), "--base", str(ROOT / recipe["base"])]
    args += ["--out", str(out), "--threads", "1"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "training finished" in printed and "budget:" in printed
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("stage0", "stage1", "stage2"):
        s = summary[stage]
        assert s["steps"] >= 1 and s["allotted_s"] >= 1
        # it stops at the first step after its time is up: over by at most one step
        assert s["wall_s"] <= s["allotted_s"] + 2 * s["wall_s"] / s["steps"] + 1
    assert summary["budget"]["minutes"] == 0.4
    codec = Codec.from_pretrained(out / "model")
    image = smooth_image(64, 96, seed=4)
    assert codec.decompress(codec.compress([image], 5))[0].shape == (64, 96, 3)
    # a re-run of the finished run does nothing more and says so
    assert cli_main(args) == 0
    assert json.loads((out / "summary.json").read_text())["stage2"] == summary["stage2"]
