"""Benchmark section 7: payload bits per image of the VQ indices as the codec writes them
(format 4: the cheapest of uniform, static pmf and context model per stream) vs fixed-length
indices and vs the static pmf, per rate, and the context model's time against the decode."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from jobs.bench.common import BenchContext, SectionResult, table, verdict
from jobs.bench.timing import measure, ms
from oscar_core.entropy import fixed_length_bits
from oscar_core.images import pad_reflect, padded_size, to_tensor

ENTROPY_GOAL = 0.10  # the range coder saves >= 10% over fixed-length indices at every rate
CONTEXT_TIME_GOAL = 0.10  # the context model's decode < 10% of the codec's decode per image


def _context_timing(codec, coder, grid: np.ndarray, image: np.ndarray, rate: int, repeats: int):
    """Median times of the context model's encode and decode of ``grid`` alone, and of the
    codec's whole decode of ``image``'s stream at ``rate``."""
    data = coder.encode(grid)
    (stream,) = codec.compress([image], rate)
    return {
        "context_encode": measure(lambda: coder.encode(grid), repeats),
        "context_decode": measure(lambda: coder.decode(data, *grid.shape), repeats),
        "codec_decode": measure(lambda: codec.decompress([stream]), repeats),
    }


def section_entropy_gain(ctx: BenchContext) -> SectionResult:
    """7. Payload bits per image vs fixed-length indices and vs the static pmf, per rate,
    under what the codec writes (the cheapest of uniform, static pmf, context model per
    stream), and what the context model costs in time against the codec's decode."""
    from oscar_core.bitstream import ProbabilityModel

    codec, model = ctx.codec, ctx.codec.model
    has_context = model.context is not None
    z0_cache: dict[tuple, Tensor] = {}
    per_rate, rows, ok_all, fast_all, same_all = {}, [], True, True, True
    for r in ctx.rates:
        rate, coder = codec.ladder[r], codec.stream_coder(r)
        grids = []
        for k, img in enumerate(ctx.images):
            ph, pw = padded_size(*img.shape[:2], model.pad_multiple(r))
            if (k, ph, pw) not in z0_cache:
                z0_cache[(k, ph, pw)] = model.autoencoder.encode(
                    pad_reflect(to_tensor([img]), ph, pw)
                )
            grids.append(model.hypers[r].encode_indices(z0_cache[(k, ph, pw)])[0].numpy())
        n = len(grids)
        bits = {m: 0.0 for m in ProbabilityModel}
        chosen_bits, fixed, chosen = 0.0, 0.0, {m.name.lower(): 0 for m in ProbabilityModel}
        for grid in grids:
            payloads = coder.payloads(grid)
            for m, data in payloads.items():
                bits[m] += 8 * len(data)
            m, data = coder.encode(grid)
            chosen[m.name.lower()] += 1
            chosen_bits += 8 * len(data)
            fixed += fixed_length_bits(grid.size, rate.K)
            back = coder.decode(m, data, *grid.shape)  # the indices come back unchanged
            same_all &= bool(np.array_equal(back, grid))
        ctx_coder = coder.coders.get(ProbabilityModel.CONTEXT)
        timing = {}
        if ctx_coder is not None:  # the context model's own cost, on the first image
            timing = _context_timing(codec, ctx_coder, grids[0], ctx.images[0], r, ctx.repeats)
        share = timing["context_decode"].median / timing["codec_decode"].median if timing else None
        saved = 1 - chosen_bits / fixed
        vs_static = 1 - chosen_bits / bits[ProbabilityModel.STATIC]
        ok = saved >= ENTROPY_GOAL
        fast = share is not None and share < CONTEXT_TIME_GOAL
        ok_all &= ok
        fast_all &= fast
        per_rate[str(r)] = {
            "K": rate.K,
            "symbols_per_image": int(grids[0].size),
            "fixed_bits_per_image": fixed / n,
            "uniform_bits_per_image": bits[ProbabilityModel.UNIFORM] / n,
            "static_bits_per_image": bits[ProbabilityModel.STATIC] / n,
            "context_bits_per_image": bits[ProbabilityModel.CONTEXT] / n if has_context else None,
            "coded_bits_per_image": chosen_bits / n,
            "saved_fraction": saved,
            "saved_vs_static_fraction": vs_static,
            "streams_per_model": chosen,
            "context_encode_ms": ms(timing["context_encode"].median) if timing else None,
            "context_decode_ms": ms(timing["context_decode"].median) if timing else None,
            "codec_decode_ms": ms(timing["codec_decode"].median) if timing else None,
            "context_decode_share": share,
            "status": verdict(ok),
        }
        v = per_rate[str(r)]
        rows.append(
            [r, rate.K, v["symbols_per_image"], fixed / n, v["static_bits_per_image"]]
            + [v["context_bits_per_image"], chosen_bits / n, 100 * saved, 100 * vs_static]
            + ["/".join(str(chosen[k]) for k in ("context", "static", "uniform"))]
            + [v["context_encode_ms"], v["context_decode_ms"], v["codec_decode_ms"]]
            + [None if share is None else 100 * share, verdict(ok)]
        )
    worst = min(per_rate, key=lambda k: per_rate[k]["saved_fraction"])
    headers = ["rate", "K", "symbols", "fixed", "static", "context", "coded", "saved %"]
    headers += ["vs static %", "streams c/s/u", "ctx enc ms", "ctx dec ms", "decode ms"]
    headers += ["ctx dec % of decode", "goal"]
    res = SectionResult(
        title="Entropy coding gain",
        status=verdict(ok_all and fast_all and same_all),
        goal=(
            f">= {ENTROPY_GOAL:.0%} fewer payload bits than n*ceil(log2 K) at every rate, the "
            f"context model's decode < {CONTEXT_TIME_GOAL:.0%} of the codec's decode time"
        ),
        measured=", ".join(
            f"rate {r}: {v['saved_fraction']:+.1%} vs fixed, {v['saved_vs_static_fraction']:+.1%} vs static"
            for r, v in per_rate.items()
        ),
        note=(
            "payload bits (x 8 bytes; the 15-byte header and CRC excluded) per image, mean over "
            f"{len(ctx.images)} images; coded = what the codec writes, the shortest of the "
            "uniform, static-pmf and context payloads per stream (streams: how many of each, "
            "context/static/uniform); saved = vs fixed-length n*ceil(log2 K), vs static = vs the "
            "static pmf's payload; timing on the first image (median of the repeats): the "
            "context model's range coding alone, and Codec.decompress of one stream"
            + ("" if has_context else "; the model has no context model (oscar fit-context)")
        ),
        figures={
            **{f"rate{r}_coded_bits": v["coded_bits_per_image"] for r, v in per_rate.items()},
            **{f"rate{r}_fixed_bits": v["fixed_bits_per_image"] for r, v in per_rate.items()},
        },
        tables=[
            table(
                "Payload bits per image (mean over images) and the context model's time",
                headers,
                rows,
            )
        ],
        details={"per_rate": per_rate, "indices_identical": same_all},
    )
    if not (ok_all and fast_all and same_all):
        v = per_rate[worst]
        res.shortfall = (
            f"rate {worst}: {v['saved_fraction']:+.1%} saved, "
            f"{max(0.0, ENTROPY_GOAL - v['saved_fraction']):.1%} short"
        )
        if not same_all:
            res.reason = "a payload did not decode to the indices it was coded from"
        elif not has_context:
            res.reason = (
                "the model has no context model: the static pmf of a near-uniform index "
                "distribution saves ~0 (fit one: oscar fit-context --model DIR --data IMAGES)"
            )
        elif not fast_all:
            slow = max(per_rate, key=lambda k: per_rate[k]["context_decode_share"] or 0)
            res.reason = (
                f"rate {slow}: the context model's decode takes "
                f"{per_rate[slow]['context_decode_share']:.1%} of the codec's decode time"
            )
        else:
            res.reason = (
                f"rate {worst}: the context model codes {v['context_bits_per_image']:.0f} "
                f"bits/image of {v['fixed_bits_per_image']:.0f} fixed: these images' indices "
                "are less predictable from their neighbours than the training images'"
            )
    return res
