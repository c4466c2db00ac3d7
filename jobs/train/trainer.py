"""The stage plan of ``oscar train``: two-stage OSCAR training (+ stage 0 for the tiny latent
autoencoder), run by ``Trainer.run`` in one process (``job.py`` starts the processes).

    stage0  latent autoencoder: L1 + (1 - SSIM) + tiny KL (+ Cb/Cr L1)  (not for a pretrained VAE)
            (base ``oscar-sd21`` + ``sd21_dir``: SD-2.1's VAE and UNet, frozen, with rank-16
            LoRA adapters + full conv_in + embedding trained in stage 2, as the reference)
    stage1  hyper-encoders, frozen autoencoder: -cos(z~, z0) per position + VQ commitment
            (+ ``stage1_mse_weight`` x relative error of x_t = match_norms(z~) to z0)
    fit     per rate on held-out crops: mean cos(z~, z0) -> t_r with sqrt(abar_t) closest;
            index histograms -> the entropy coder's static pmfs (stored in the model)
    stage2  joint: denoiser + hyper-encoders + embedding, one random rate per step:
            L1 + (1 - SSIM) + latent L1 + alignment (-cos per channel) + adversarial
    stage3  optional (steps > 0): the latent decoder alone on the codec's z0_hat, everything
            upstream frozen (bitstreams stay valid): ``decoder.py``

Each stage checkpoints to ``<out>/ckpt/<stage>.pt`` (resumable: re-run the same command) and
marks itself done with ``<stage>.done``; ``max_minutes`` bounds one invocation. The final
model directory is ``<out>/model`` (config.json + model.safetensors). Losses live in
``losses.py``, data in ``data.py`` (a directory, or WebDataset shards on S3 or local disk),
multi-process training in ``dist.py`` (``--nproc N`` or torchrun: gradients averaged over
ranks, rank 0 writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jobs.train.base import starting_model
from jobs.train.budget import STAGES, TimeBudget, lr_factor_at
from jobs.train.config import StageConfig, TrainConfig
from jobs.train.data import CropSampler, load_images, split
from jobs.train.decoder import DecoderLoss, decoder_parameters
from jobs.train.dist import DistContext
from jobs.train.losses import PatchDiscriminator, Stage2Loss, autoencoder_loss, fit_rate
from oscar_core.hyper import channel_rms, cosine_per_position, match_norms

log = logging.getLogger("oscar.train")


class Trainer:
    def __init__(self, config: TrainConfig, dist: DistContext | None = None):
        if not config.stage2_hypers and (config.stage1.steps or config.fit_timesteps):
            raise ValueError(
                "stage2_hypers false keeps the base's codes: give stage1.steps 0 and "
                "fit_timesteps false too"
            )
        self.cfg = config
        self.dist = dist or DistContext()  # world_size 1: the single-process path
        self.out = Path(config.out)
        if self.dist.is_main:
            (self.out / "ckpt").mkdir(parents=True, exist_ok=True)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)  # every rank builds the same initial weights
        if config.threads:
            torch.set_num_threads(config.threads)
        self.model = starting_model(config, self.out / "ckpt" / "model")
        ae = self.model.autoencoder
        if ae.config.pretrained:  # SD-2.1's VAE: frozen in every stage (the reference's)
            ae.requires_grad_(False)
        if config.colour_skip and not ae.config.colour_skip:
            if ae.config.pretrained:
                raise ValueError("colour_skip is for the tiny autoencoder, not a pretrained VAE")
            ae.enable_colour_skip()
        self.model.to(self.device)
        if self.dist.enabled:  # then different noise / posterior samples per rank
            torch.manual_seed(self.dist.seed(config.seed))
        images, _ = load_images(config.data)  # every rank holds all images (decoded once)
        train, held = split(images, config.holdout_every)
        self.train_sampler = CropSampler(train, seed=self.dist.seed(config.seed))
        self.held_sampler = CropSampler(held, seed=config.seed + 1)  # used by rank 0 only
        log.info("data: %d train / %d held-out images from %s", len(train), len(held), config.data)
        if self.dist.is_main:
            (self.out / "train_config.json").write_text(
                json.dumps(dataclasses.asdict(config), indent=2)
            )
        self.summary: dict = self._read_summary()
        self.t_start = time.monotonic()  # this invocation's clock (the budget's)
        self.budget = None
        if config.minutes is not None:  # a wall-clock run (budget.py)
            spent = float(self.summary.get("budget", {}).get("spent_s", 0.0))
            self.budget = TimeBudget(config.minutes, config.budget_shares, spent)
        self.summary["data"] = {"images": len(images), "train": len(train), "held": len(held),
                                "ranks": self.dist.world_size}  # fmt: skip

    # -- generic stage loop ------------------------------------------------------------
    def run_stage(
        self, name: str, cfg: StageConfig, params: list, step_fn, fast: tuple = ((), 1.0)
    ) -> bool:
        """Optimise ``params`` with ``step_fn(step) -> dict of losses``; True when finished.
        ``fast = (some of params, k)``: those train at k times the stage's learning rate."""
        done_marker = self.out / "ckpt" / f"{name}.done"
        if done_marker.exists():
            return True
        fast_ids = {id(p) for p in fast[0]}
        groups = [{"params": [p for p in params if id(p) not in fast_ids], "scale": 1.0},
                  {"params": list(fast[0]), "scale": float(fast[1])}]  # fmt: skip
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=1e-4)
        ckpt_path = self.out / "ckpt" / f"{name}.pt"
        start, elapsed_before = 0, 0.0
        # with a budget: this stage's seconds (fixed when it first starts), else None
        allotted = self._allot(name) if self.budget else None
        if ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            start, elapsed_before = int(state["step"]), float(state["elapsed"])
            if allotted is not None:
                allotted = float(state.get("allotted") or allotted)
            if hasattr(step_fn, "load_state_dict") and "extra" in state:
                step_fn.load_state_dict(state["extra"])
            log.info("%s: resumed at step %d", name, start)
        self.dist.broadcast_module(self.model)  # all ranks start from rank 0's weights
        if isinstance(getattr(step_fn, "disc", None), torch.nn.Module):
            self.dist.broadcast_module(step_fn.disc)  # initialised from per-rank RNG
        t0 = time.monotonic()

        def save(step: int) -> None:
            if not self.dist.is_main:
                return
            extra = step_fn.state_dict() if hasattr(step_fn, "state_dict") else {}
            state = {"model": self.model.state_dict(), "opt": opt.state_dict(), "step": step,
                     "elapsed": elapsed_before + time.monotonic() - t0, "extra": extra,
                     "allotted": allotted}  # fmt: skip
            torch.save(state, ckpt_path.with_suffix(".tmp"))
            ckpt_path.with_suffix(".tmp").replace(ckpt_path)

        # steps: the stage's count, or (with a budget) until its allotted time is used
        steps = range(start, cfg.steps) if allotted is None else itertools.count(start)
        bar = tqdm(steps, desc=name, initial=start, total=cfg.steps if allotted is None else None,
                   disable=not self.dist.is_main)  # fmt: skip
        last_save, averages, done = time.monotonic(), {}, cfg.steps
        for step in bar:
            if allotted is None:
                factor = _lr_factor(step, cfg.steps)
            else:  # rank 0's clock decides for all ranks (the same rate, the same last step)
                spent = elapsed_before + time.monotonic() - t0
                progress = self.dist.broadcast_object(spent / allotted)
                if progress >= 1 and step > 0:
                    done = step
                    break
                factor = lr_factor_at(progress)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * group["scale"] * factor
            with self.autocast():
                losses = step_fn(step)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.dist.all_reduce_grads(params)  # mean over ranks: identical steps everywhere
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self.dist.broadcast_buffers(self.model)  # EMA codebooks move in forward
            for k, v in losses.items():
                v = float(v.detach()) if torch.is_tensor(v) else float(v)
                averages[k] = 0.98 * averages.get(k, v) + 0.02 * v
            bar.set_postfix({k: f"{v:.4f}" for k, v in averages.items()})
            if step % 50 == 0:
                log.info(
                    "%s step %d %s",
                    name,
                    step,
                    json.dumps({k: round(v, 5) for k, v in averages.items()}),
                )
            minutes = (time.monotonic() - t0) / 60
            if time.monotonic() - last_save > 300:
                save(step + 1)
                last_save = time.monotonic()
            # One decision for all ranks (their clocks differ; a lone rank would hang).
            limited = bool(cfg.max_minutes) and (allotted is not None or step + 1 < cfg.steps)
            if limited and self.dist.any(minutes >= cfg.max_minutes):
                save(step + 1)
                log.info(
                    "%s: stopped at step %d after %.1f min; re-run to resume",
                    name,
                    step + 1,
                    minutes,
                )
                return False
        elapsed = elapsed_before + time.monotonic() - t0
        steps_done = max(done, start) if allotted is None else done
        self.summary[name] = {"steps": steps_done, "wall_s": round(elapsed, 1),
                              "final_losses": {k: round(v, 5) for k, v in averages.items()}}  # fmt: skip
        if allotted is not None:
            self.summary[name]["allotted_s"] = round(allotted, 1)
        self._checkpoint_model()
        if self.dist.is_main:
            done_marker.write_text(json.dumps(self.summary[name]))
            ckpt_path.unlink(missing_ok=True)
        return True

    def autocast(self):
        """bf16 autocast of a training forward on CUDA (``cuda_bf16``); nothing on CPU."""
        if self.device.type == "cuda" and self.cfg.cuda_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _allot(self, name: str) -> float:
        """This stage's seconds under the budget: its share of what is left (``budget.py``),
        among the stages still to run (those with steps > 0, not done)."""
        later = STAGES[STAGES.index(name) + 1 :]
        to_run = [name] + [s for s in later if self._runs(s) and s not in self.summary]
        return self.budget.allot(name, to_run, time.monotonic() - self.t_start)

    def _runs(self, stage: str) -> bool:
        """Whether ``stage`` trains anything in this run (steps > 0; stage 0 not for a
        pretrained VAE)."""
        if stage == "stage0" and self.model.autoencoder.config.pretrained:
            return False
        return getattr(self.cfg, stage).steps > 0

    def _checkpoint_model(self) -> None:
        if not self.dist.is_main:
            return
        if self.budget is not None:  # the run's seconds so far, for a resumed invocation
            spent = self.budget.spent_before + time.monotonic() - self.t_start
            self.summary["budget"] = {"minutes": self.budget.minutes, "spent_s": round(spent, 1)}
        self.model.save_pretrained(self.out / "ckpt" / "model")
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2))

    def _read_summary(self) -> dict:
        path = self.out / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # -- stages -----------------------------------------------------------------------
    def stage0(self) -> bool:
        cfg, ae = self.cfg.stage0, self.model.autoencoder
        if ae.config.pretrained or cfg.steps == 0:
            return True  # a pretrained VAE (SD-2.1) or a trained base is used as is

        def step(_: int) -> dict:
            x = self.train_sampler.batch(cfg.batch, cfg.crop).to(self.device)
            return autoencoder_loss(ae, x, w_chroma=self.cfg.chroma_weight)

        # the zero-started colour skip (31 weights) trains k times faster than the VAE
        skip = (
            [*ae.skip_in.parameters(), *ae.skip_out.parameters()] if ae.config.colour_skip else []
        )
        fast = (skip, self.cfg.colour_skip_lr_scale)
        finished = self.run_stage("stage0", cfg, list(ae.parameters()), step, fast)
        if finished and "scaling_factor" not in self.summary:
            x = self.train_sampler.batch(64, 128).to(self.device)
            sf = self.dist.broadcast_object(ae.fit_scaling_factor(x))  # rank 0's value
            ae.scaling_factor = ae.config.scaling_factor = sf
            self.summary["scaling_factor"] = sf
            self._checkpoint_model()
            log.info("latent scaling factor %.5f", sf)
        return finished

    def _latent_cache(self, sampler: CropSampler, n: int, crop: int, tag: str) -> tuple:
        """(x uint8 crops, z0) for n crops, computed once per run and stored (rank 0; the
        other ranks cut their own crops and keep them in memory only)."""
        path = self.out / "ckpt" / f"latents-{tag}-{crop}.pt"
        if self.dist.is_main and path.exists():
            cached = torch.load(path, weights_only=True)
            return cached["x"], cached["z0"]
        xs, zs = [], []
        with torch.no_grad():
            for _ in range(math.ceil(n / 16)):
                x = sampler.batch(16, crop)
                xs.append(((x + 1) * 127.5).round().to(torch.uint8))
                zs.append(self.model.autoencoder.encode(x.to(self.device)).cpu())
        x, z0 = torch.cat(xs)[:n], torch.cat(zs)[:n]
        if self.dist.is_main:
            torch.save({"x": x, "z0": z0}, path)
        return x, z0

    def stage1(self) -> bool:
        cfg = self.cfg.stage1
        if cfg.steps == 0:
            return True  # nothing to train: no latents to cache either
        _, z0_all = self._latent_cache(self.train_sampler, self.cfg.cache_crops, cfg.crop, "train")
        rng = np.random.default_rng(self.dist.seed(self.cfg.seed) + 11)
        rates = self.stage1_rates()
        hypers = [self.model.hypers[r] for r in rates]
        self.model.hypers.train()

        w_mse = self.cfg.stage1_mse_weight

        def step(_: int) -> dict:
            z0 = z0_all[rng.integers(len(z0_all), size=cfg.batch)].to(self.device)
            align, mse, commit, div = 0.0, 0.0, 0.0, 0.0
            for r, hyper in zip(rates, hypers, strict=True):  # all rates share the batch
                z_tilde, _, c = hyper(z0)  # (B,4,h,w)
                align = align - cosine_per_position(z_tilde, z0)
                if w_mse:  # x_t as the decoder builds it, against z0, relative per image
                    x_t = match_norms(z_tilde, channel_rms(z0))
                    err = (x_t - z0).pow(2).mean(dim=(1, 2, 3)) / z0.pow(2).mean(dim=(1, 2, 3))
                    mse = mse + err.mean()
                commit = commit + c
                div = div + self.diversity_loss(r, z0)
            n = len(hypers)
            total = (align + w_mse * mse + commit + div) / n
            return {"total": total, "cos": -align / n, "mse": mse / n, "commit": commit / n,
                    "div": div / n}  # fmt: skip

        params = [p for hyper in hypers for p in hyper.parameters()]
        return self.run_stage("stage1", cfg, params, step)

    def stage1_rates(self) -> list[int]:
        n = len(self.model.ladder)
        rates = list(range(n)) if self.cfg.rates is None else sorted(set(self.cfg.rates))
        if not rates or not all(0 <= r < n for r in rates):
            raise ValueError(f"rates {self.cfg.rates} must be indices of the {n}-rate ladder")
        return rates

    def diversity_loss(self, rate_index: int, z0: torch.Tensor) -> torch.Tensor | float:
        """w * (1 - H(p)/log K) for the rates diversity applies to, else 0. A negative w
        (``diversity_weights``) is an entropy penalty: fewer codes in use, fewer bits."""
        listed = self.cfg.diversity_rates
        weight = (self.cfg.diversity_weights or {}).get(str(rate_index), self.cfg.diversity)
        if weight == 0 or (listed is not None and rate_index not in listed):
            return 0.0
        hyper = self.model.hypers[rate_index]
        return weight * (1 - hyper.code_entropy(z0, self.cfg.diversity_temperature))

    def fit(self) -> None:
        """Refit t_r per rate and the entropy coder's pmfs on held-out crops."""
        if "fit" in self.summary or not self.cfg.fit_timesteps:
            return
        rows = self._held_fit_rows()
        self.model.config.ladder = [
            [r.ss, r.K, row["t"]] for r, row in zip(self.model.ladder, rows, strict=True)
        ]
        self.model.ladder = self.model.config.rate_ladder()
        for r, row in enumerate(rows):
            self.model.set_pmf(r, torch.from_numpy(row.pop("pmf")))
        self.summary["fit"] = rows
        self._checkpoint_model()
        log.info("fit: %s", json.dumps(rows))

    def refit_pmfs(self) -> None:
        """After stage 2 the hyper-encoders have moved: re-estimate the entropy coder's pmfs
        (t_r stays: the denoiser was trained at those timesteps)."""
        if "pmf_refit" in self.summary or not self.cfg.stage2_hypers:
            return  # frozen hyper-encoders: the base's pmfs are still theirs
        rows = self._held_fit_rows()
        for r, row in enumerate(rows):
            self.model.set_pmf(r, torch.from_numpy(row.pop("pmf")))
        self.summary["pmf_refit"] = rows
        self._checkpoint_model()
        log.info("pmf refit after stage 2: %s", json.dumps(rows))

    def _held_fit_rows(self) -> list[dict]:
        """``fit_rate`` per rate on held-out latents; computed by rank 0, sent to every rank
        (so t_r and the pmfs are the same everywhere without a second pass)."""
        self.model.eval()
        rows = None
        if self.dist.is_main:
            _, z0 = self._latent_cache(self.held_sampler, self.cfg.fit_crops, 256, "held")
            rows = [
                fit_rate(self.model, r, z0.to(self.device)) for r in range(len(self.model.ladder))
            ]
        return self.dist.broadcast_object(rows)

    def stage2(self) -> bool:
        cfg = self.cfg.stage2
        x_all, z0_all = self._latent_cache(
            self.train_sampler, self.cfg.cache_crops, cfg.crop, "train"
        )
        self.model.autoencoder.requires_grad_(False)
        disc = PatchDiscriminator().to(self.device)
        # Ranks draw their own crops but the same rate per step: the VQ layer all-reduces its
        # EMA statistics inside forward when torch.distributed is up, so every rank must run
        # the same hyper-encoder. The discriminator's gradients are averaged like the rest.
        d = self.dist
        weights = {"lpips": self.cfg.lpips_weight} if self.cfg.lpips_weights else {}
        hypers = self.cfg.stage2_hypers
        extra = self.diversity_loss if hypers else None  # diversity moves only hyper-encoders
        loss = Stage2Loss(self.model, disc, x_all, z0_all, cfg.batch, self.device,
                          d.seed(self.cfg.seed), weights=weights, extra_loss=extra,
                          lpips_weights=self.cfg.lpips_weights,
                          rate_seed=self.cfg.seed + 22 if d.enabled else None,
                          grad_sync=d.all_reduce_grads)  # fmt: skip
        params = list(self.model.denoiser.parameters())
        self.model.denoiser.train()
        if hypers:
            params += list(self.model.hypers.parameters())
            self.model.hypers.train()
        else:  # eval: the VQ codebooks' EMA does not move either
            self.model.hypers.eval().requires_grad_(False)
        return self.run_stage("stage2", cfg, [p for p in params if p.requires_grad], loss)

    def stage3(self) -> bool:
        """Decoder fine-tune on z0_hat (``decoder.py``); skipped with 0 steps."""
        cfg = self.cfg.stage3
        if cfg.steps == 0:
            return True
        x_all, z0_all = self._latent_cache(
            self.train_sampler, self.cfg.cache_crops, cfg.crop, "train"
        )
        self.model.eval().requires_grad_(False)  # upstream frozen: bitstreams stay valid
        params = decoder_parameters(self.model)
        for p in params:
            p.requires_grad_(True)
        self.model.autoencoder.vae.decoder.train()
        disc = PatchDiscriminator().to(self.device)
        loss = DecoderLoss(self.model, disc, x_all, z0_all, cfg.batch, self.device,
                           self.dist.seed(self.cfg.seed), grad_sync=self.dist.all_reduce_grads)  # fmt: skip
        return self.run_stage("stage3", cfg, params, loss)

    def run(self) -> bool:
        for stage in (self.stage0, self.stage1):
            if not stage():
                return False
        self.fit()
        if not self.stage2():
            return False
        self.refit_pmfs()
        if not self.stage3():
            return False
        self.model.eval()
        # LoRA adapters (SD-2.1 base) are merged: the model directory holds a plain UNet
        self.model.denoiser.merge_lora()
        final = self.out / "model"
        self.model.config.notes = {**self.model.config.notes, "training": self.summary}
        if self.dist.is_main:
            self.model.save_pretrained(final, dtype=getattr(torch, self.cfg.save_dtype))
            log.info("final model written to %s", final)
        self.dist.barrier()  # no rank leaves before the model is on disk
        return True


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, total // 50)
    if step < warm:
        return (step + 1) / warm
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
