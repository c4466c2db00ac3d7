"""Benchmark section 2 on the codec alone: the stage profile (time per image of every stage
at every rate, batch size and precision: fp32, and bf16 autocast side by side), plus the op
and FLOP counter it uses (``op_count`` / ``gflops``, which ``peers.py`` uses too); run under
``torch.inference_mode()`` (set by the caller, ``jobs/bench/job.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from jobs.bench.common import BenchContext, SectionResult, cycle_batches, table
from jobs.bench.timing import measure, ms
from oscar_core.hyper import channel_rms, match_norms
from oscar_core.images import crop, pad_reflect, padded_size, to_tensor, to_uint8

ENC_STAGES = ("preprocess", "latent_encode", "hyper_encode_vq", "entropy_encode")
DEC_STAGES = (
    "entropy_decode",
    "hyper_decode",
    "norm_matching",
    "denoiser",
    "latent_decode",
    "postprocess",
)
STAGE_NOTES = {
    "preprocess": "uint8 -> float tensor, reflection pad",
    "latent_encode": "autoencoder encoder (posterior mode)",
    "hyper_encode_vq": "hyper-encoder backbone + cosine argmax VQ + channel RMS",
    "entropy_encode": "range encode (every probability model, the cheapest kept) + header/CRC pack",
    "entropy_decode": "header/CRC check + range decode",
    "hyper_decode": "codebook lookup + projection to z~",
    "norm_matching": "rescale z~ to the transmitted RMS",
    "denoiser": "one UNet call + x0 formula",
    "latent_decode": "autoencoder decoder",
    "postprocess": "crop, float -> uint8",
}


# --------------------------------------------------------------------------- helpers


def op_count(fn: Callable[[], Any]) -> tuple[float, int]:
    """(GFLOP, aten ops executed) of one call of ``fn``. FLOPs of convs, matmuls and
    attention by torch's per-op formulas; the op count (views included) is an upper bound
    on the kernels a GPU would launch. A bare dispatch mode, not ``FlopCounterMode``: its
    module tracker installs autograd hooks that fail on parameters under inference mode."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Count(TorchDispatchMode):
        flops = 0
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            count = flop_registry.get(func._overloadpacket)
            if count is None:  # composite ops (conv2d, linear) reach here whole: decompose
                with self:
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            self.ops += 1
            if count is not None:
                self.flops += count(*args, **kwargs, out_val=out)
            return out

    with _Count() as counter:
        fn()
    return counter.flops / 1e9, counter.ops


def gflops(fn: Callable[[], Any]) -> float:
    return op_count(fn)[0]


# --------------------------------------------------------------------------- 2. stages


def _rate_invariant(
    ctx: BenchContext, batches: list[list[np.ndarray]], rate, key, precision: str
) -> dict:
    """Stages that do not depend on the rate beyond the padded size: measured once per
    (precision, batch size, padded size) and shared by the rates (cached in ``ctx.cache``).
    The heavy stages go through the codec's own ``latent_encode`` / ``denoise`` /
    ``latent_decode``, i.e. under bf16 autocast for the bf16 codec."""
    cache = ctx.cache.setdefault("stage_invariant", {})
    if (precision, *key) in cache:
        return cache[(precision, *key)]
    codec, model, reps, warm = ctx.codec_for(precision), ctx.codec.model, ctx.repeats, ctx.warmup
    n = sum(len(b) for b in batches)
    h, w = batches[0][0].shape[:2]
    ph, pw = key[1], key[2]
    xs = [pad_reflect(to_tensor(b), ph, pw) for b in batches]  # (B,3,ph,pw) each
    z0 = [codec.latent_encode(x) for x in xs]  # (B,4,ph/8,pw/8) float32
    t_r = [torch.full((len(b),), rate.t, dtype=torch.long) for b in batches]
    z0h = [codec.denoise(z, t) for z, t in zip(z0, t_r, strict=True)]  # z0 stands for x_t
    x_h = [codec.latent_decode(z) for z in z0h]  # (B,3,ph,pw) float32
    out = {
        "preprocess": measure(lambda: [pad_reflect(to_tensor(b), ph, pw) for b in batches], reps),
        "latent_encode": measure(lambda: [codec.latent_encode(x) for x in xs], reps, warm),
        "denoiser": measure(
            lambda: [codec.denoise(z, t) for z, t in zip(z0, t_r, strict=True)], reps, warm
        ),
        "latent_decode": measure(lambda: [codec.latent_decode(z) for z in z0h], reps, warm),
        "postprocess": measure(lambda: [to_uint8(crop(x, h, w)) for x in x_h], reps, warm),
    }
    result = {"seconds": {k: v.per(n) for k, v in out.items()}, "z0": z0, "gflop": None}
    if len(batches[0]) == 1:  # FLOPs per image at B=1: counted once per padded size (fp32
        gcache = ctx.cache.setdefault("gflop", {})  # calls; the count does not depend on dtype)
        if key[1:] not in gcache:
            gcache[key[1:]] = {
                "latent_encode": op_count(lambda: model.autoencoder.encode(xs[0])),
                "denoiser": op_count(lambda: model.denoiser(z0[0], t_r[0])),
                "latent_decode": op_count(lambda: model.autoencoder.decode(z0h[0])),
            }
        result["gflop"] = gcache[key[1:]]
    cache[(precision, *key)] = result
    return result


def stage_profile(
    ctx: BenchContext, rate_index: int, batch: int, precision: str = "fp32"
) -> dict[str, Any]:
    """Per-image seconds of every stage at one rate, batch size and precision (cached)."""
    cache = ctx.cache.setdefault("stage_profile", {})
    if (rate_index, batch, precision) in cache:
        return cache[(rate_index, batch, precision)]
    codec, model = ctx.codec_for(precision), ctx.codec.model
    reps, warm = ctx.repeats, ctx.warmup
    rate = codec.ladder[rate_index]
    batches = cycle_batches(ctx.images, batch)
    n = sum(len(b) for b in batches)
    h, w = batches[0][0].shape[:2]
    ph, pw = padded_size(h, w, model.pad_multiple(rate_index))
    inv = _rate_invariant(ctx, batches, rate, (batch, ph, pw), precision)
    z0 = inv["z0"]
    hyper = model.hypers[rate_index]

    def hyper_encode(z):
        return channel_rms(z), hyper.encode_indices(z).numpy()

    side = [hyper_encode(z) for z in z0]

    def entropy_encode(rms, idx):
        return codec.pack_streams(idx, rms, rate_index, h, w)  # the codec's own stage

    streams = [entropy_encode(r, i) for r, i in side]
    parsed = [[codec.parse(s) for s in group] for group in streams]
    idx_t = [torch.from_numpy(np.stack([p.indices for p in g])) for g in parsed]
    rms_t = [torch.tensor([p.header.rms for p in g], dtype=torch.float32) for g in parsed]
    z_t = [hyper.decode_indices(i) for i in idx_t]
    t = {
        "hyper_encode_vq": measure(lambda: [hyper_encode(z) for z in z0], reps, warm),
        "entropy_encode": measure(lambda: [entropy_encode(r, i) for r, i in side], reps, warm),
        "entropy_decode": measure(
            lambda: [[codec.parse(s) for s in g] for g in streams], reps, warm
        ),
        "hyper_decode": measure(lambda: [hyper.decode_indices(i) for i in idx_t], reps, warm),
        "norm_matching": measure(
            lambda: [match_norms(z, r) for z, r in zip(z_t, rms_t, strict=True)], reps, warm
        ),
    }
    sec = {**inv["seconds"], **{k: v.per(n) for k, v in t.items()}}
    gflop = ops = None
    if inv["gflop"] is not None:  # batch 1: count FLOPs and ops per image
        counted = {
            **inv["gflop"],
            "hyper_encode_vq": op_count(lambda: hyper.encode_indices(z0[0])),
            "hyper_decode": op_count(lambda: hyper.decode_indices(idx_t[0])),
        }
        gflop = {k: v[0] for k, v in counted.items()}
        ops = {k: v[1] for k, v in counted.items()}
    enc = sum(sec[s] for s in ENC_STAGES)
    dec = sum(sec[s] for s in DEC_STAGES)
    prof = {
        "rate": rate_index,
        "batch": batch,
        "precision": precision,
        "images": n,
        "image_size": [w, h],
        "seconds": {s: sec[s] for s in ENC_STAGES + DEC_STAGES},
        "encode_s": enc,
        "decode_s": dec,
        "total_s": enc + dec,
        "bottleneck": max(sec, key=sec.get),
        "gflop_per_image": gflop,
        "ops_per_image": ops,
        "symbols_per_image": int(parsed[0][0].indices.size),
    }
    cache[(rate_index, batch, precision)] = prof
    return prof


def section_stage_profile(ctx: BenchContext) -> SectionResult:
    """2. Time per image of every stage, at every rate, batch size and precision (fp32, and
    bf16 autocast where the CPU has it: ``ctx.precisions``), all measured in this run."""
    precs, rates, nr = ctx.precisions, ctx.rates, len(ctx.rates)
    profiles = {
        (r, b, p): stage_profile(ctx, r, b, p)
        for p in precs
        for b in ctx.batch_sizes
        for r in rates
    }
    # mean over rates of encode + decode seconds per image, per (batch, precision)
    totals = {
        (b, p): sum(profiles[(r, b, p)]["total_s"] for r in rates) / nr
        for p in precs
        for b in ctx.batch_sizes
    }
    by_prec: dict[str, dict[str, Any]] = {}
    for p in precs:
        best = min(ctx.batch_sizes, key=lambda b, p=p: totals[(b, p)])
        shares: dict[str, float] = {}
        for r in rates:
            prof = profiles[(r, best, p)]
            for s, v in prof["seconds"].items():
                shares[s] = shares.get(s, 0.0) + v / prof["total_s"] / nr
        by_prec[p] = {
            "best_batch": best,
            "best_total_s": totals[(best, p)],
            "bottleneck": max(shares, key=shares.get),
            "shares_at_best_batch": shares,
            "batch_totals_s": {str(b): totals[(b, p)] for b in ctx.batch_sizes},
        }
    ref = precs[0]  # "fp32" unless --precision asked for bf16 alone
    for p in precs[1:]:  # > 1: faster than the reference precision
        by_prec[p]["speedup_vs_" + ref] = by_prec[ref]["best_total_s"] / by_prec[p]["best_total_s"]
    main = by_prec[ref]
    size = profiles[(rates[0], 1, ref)]["image_size"]
    stages = list(ENC_STAGES + DEC_STAGES)

    def rows(b: int, ps: tuple[str, ...]) -> list[list[Any]]:
        return [
            [r, p, *(ms(profiles[(r, b, p)]["seconds"][s]) for s in stages)]
            + [ms(profiles[(r, b, p)]["encode_s"]), ms(profiles[(r, b, p)]["decode_s"])]
            + [profiles[(r, b, p)]["bottleneck"]]
            for r in rates
            for p in ps
        ]

    headers = ["rate", "precision", *stages, "encode", "decode", "bottleneck"]
    tables = [table(f"ms per image, batch 1, {size[0]}x{size[1]}", headers, rows(1, precs))]
    for p in precs:
        if by_prec[p]["best_batch"] != 1:
            b = by_prec[p]["best_batch"]
            tables.append(table(f"ms per image, {p}, batch {b} (best)", headers, rows(b, (p,))))
    tables.append(
        table(
            "Batch size: total ms per image (mean over rates)",
            ["batch", "precision", "encode + decode ms/image", "images/s", f"x faster than {ref}"],
            [
                [b, p, ms(totals[(b, p)]), 1 / totals[(b, p)], totals[(b, ref)] / totals[(b, p)]]
                for b in ctx.batch_sizes
                for p in precs
            ],
        )
    )
    if len(precs) > 1:  # per stage, batch 1, mean over rates: where the speed-up comes from
        mean = {
            (s, p): sum(profiles[(r, 1, p)]["seconds"][s] for r in rates) / nr
            for s in stages
            for p in precs
        }
        for part, names in (("encode", ENC_STAGES), ("decode", DEC_STAGES), ("total", stages)):
            for p in precs:
                mean[(part, p)] = sum(mean[(s, p)] for s in names)
        tables.append(
            table(
                "Precision per stage, batch 1, ms per image (mean over rates)",
                ["stage", *precs, *(f"{ref} / {p}" for p in precs[1:])],
                [
                    [s, *(ms(mean[(s, p)]) for p in precs)]
                    + [mean[(s, ref)] / mean[(s, p)] for p in precs[1:]]
                    for s in [*stages, "encode", "decode", "total"]
                ],
            )
        )
    gf_stages = ["latent_encode", "hyper_encode_vq", "hyper_decode", "denoiser", "latent_decode"]
    gf_rows = [
        [r, *((profiles[(r, 1, ref)]["gflop_per_image"] or {}).get(s) for s in gf_stages)]
        for r in rates
    ]
    tables.append(
        table("GFLOP per image (torch FLOP counter, batch 1)", ["rate", *gf_stages], gf_rows)
    )
    measured = "; ".join(
        f"{p}: best batch {v['best_batch']}, {ms(v['best_total_s'])} ms/image encode+decode"
        + (f" ({v['speedup_vs_' + ref]:.2f}x the speed of {ref})" if p != ref else "")
        + f", bottleneck {v['bottleneck']} ({v['shares_at_best_batch'][v['bottleneck']]:.0%})"
        for p, v in by_prec.items()
    )
    return SectionResult(
        title="Stage profile",
        status="info",
        goal="name the bottleneck",
        measured=f"{size[0]}x{size[1]}, mean over {nr} rate(s): {measured}",
        note=ctx.precision_note,
        figures={
            **{
                ("" if p == ref else f"{p}_") + f"b{b}_rate{r}_{s}_ms": 1000
                * profiles[(r, b, p)]["seconds"][s]
                for p in precs
                for b in ctx.batch_sizes
                for r in rates
                for s in stages
            },
            **{f"{p}_speedup": v["speedup_vs_" + ref] for p, v in by_prec.items() if p != ref},
        },
        tables=tables,
        details={
            "bottleneck": main["bottleneck"],
            "bottleneck_share": main["shares_at_best_batch"][main["bottleneck"]],
            "shares_at_best_batch": main["shares_at_best_batch"],
            "best_batch": main["best_batch"],
            "batch_totals_s": main["batch_totals_s"],
            "precisions": list(precs),
            "by_precision": by_prec,
            "stage_notes": STAGE_NOTES,
            "profiles": list(profiles.values()),
        },
    )
