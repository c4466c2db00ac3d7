"""Benchmark section 3: oscar vs a learned-codec peer (CompressAI bmshj2018-hyperprior) and
Pillow JPEG / WebP / AVIF, at every precision of ``ctx.precisions`` (fp32, and bf16 autocast
where the CPU has native bf16), all in this process, same images, threads, batch 1.

Fairness: under bf16 both sides get the same treatment, ``torch.autocast("cpu", bfloat16)``
around the whole encode and decode (the peer's convolutions and GDNs, oscar's
``Codec.precision="bf16"`` stages), so three ratios are reported per rate:

    fp32 / fp32      oscar fp32 vs peer fp32    (the default product, like for like)
    bf16 / fp32      oscar bf16 vs peer fp32    (what switching oscar's flag buys)
    bf16 / bf16      oscar bf16 vs peer bf16    (like for like again)

The goal (ratio <= 1) is judged like for like: the section passes when oscar is no slower
than the peer at every precision measured. The bf16 rows also carry how far their pixels
are from the fp32 codec's: the bf16 decode of the *same* (fp32-encoded) bitstreams, in 8-bit
levels, and the share of VQ indices a bf16 encoder changes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from jobs.bench.common import BenchContext, SectionResult, encode_each, mean_psnr, table, verdict
from jobs.bench.stage_profile import gflops, stage_profile
from jobs.bench.timing import measure, ms
from oscar_core.images import padded_size
from oscar_core.precision import compute_precision

# Pillow codecs at a low quality
PILLOW_CODECS = (("JPEG", {"quality": 10}), ("WEBP", {"quality": 10}), ("AVIF", {"quality": 10}))
CPU = torch.device("cpu")


def _bmshj(
    images: list[np.ndarray], repeats: int, warmup: int, precisions: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """bmshj2018-hyperprior q1 (random weights), timed at each precision -> {precision: ...}."""
    from compressai.zoo import bmshj2018_hyperprior

    with torch.inference_mode(False), torch.no_grad():
        net = bmshj2018_hyperprior(quality=1, pretrained=False).eval()
        net.update(force=True)
    xs = []
    for img in images:
        h, w = img.shape[:2]
        x = torch.tensor(img).permute(2, 0, 1)[None].float() / 255.0  # (1,3,h,w) in [0,1]
        ph, pw = padded_size(h, w, 64)
        xs.append((torch.nn.functional.pad(x, (0, pw - w, 0, ph - h)), h, w))
    x0 = xs[0][0]
    y = net.g_a(x0)
    z = net.h_a(torch.abs(y))
    flops = gflops(lambda: net.g_a(x0)) + gflops(lambda: net.h_a(torch.abs(y)))
    flops += gflops(lambda: net.h_s(z)) + gflops(lambda: net.g_s(y))
    n, pixels = len(images), sum(i.shape[0] * i.shape[1] for i in images)
    out = {}
    for p in precisions:

        def encode(p=p):
            with compute_precision(p, CPU):
                return [net.compress(x) for x, _, _ in xs]

        def decode(coded, p=p):
            res = []
            with compute_precision(p, CPU):
                for c, (_, h, w) in zip(coded, xs, strict=True):
                    # (1,3,ph,pw), bf16 under autocast: float before rounding to uint8
                    x_hat = net.decompress(c["strings"], c["shape"])["x_hat"][..., :h, :w].float()
                    res.append(
                        (x_hat[0] * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                    )
            return res

        coded = encode()
        out[p] = {
            "encode_s": measure(encode, repeats, warmup).per(n),
            "decode_s": measure(lambda c=coded, d=decode: d(c), repeats, warmup).per(n),
            "bpp": 8 * sum(len(s[0]) for c in coded for s in c["strings"]) / pixels,
            "psnr_db": mean_psnr(images, decode(coded)),
            "gflop_per_image": flops,
        }
        out[p]["total_s"] = out[p]["encode_s"] + out[p]["decode_s"]
    return out


def _pillow(images: list[np.ndarray], repeats: int, warmup: int) -> dict[str, Any]:
    from PIL import Image, features

    out: dict[str, Any] = {}
    n, pixels = len(images), sum(i.shape[0] * i.shape[1] for i in images)
    for fmt, kwargs in PILLOW_CODECS:
        if fmt == "AVIF" and not features.check("avif"):
            out[fmt] = {"skipped": "Pillow built without AVIF"}
            continue
        pil = [Image.fromarray(i) for i in images]

        def encode(pil=pil, fmt=fmt, kwargs=kwargs):
            datas = []
            for im in pil:
                buf = io.BytesIO()
                im.save(buf, fmt, **kwargs)
                datas.append(buf.getvalue())
            return datas

        def decode(datas):
            return [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas]

        datas = encode()
        out[fmt] = {
            "settings": kwargs,
            "encode_s": measure(encode, repeats, warmup).per(n),
            "decode_s": measure(lambda d=datas: decode(d), repeats, warmup).per(n),
            "bpp": 8 * sum(len(d) for d in datas) / pixels,
            "psnr_db": mean_psnr(images, decode(datas)),
        }
    return out


def _oscar(ctx: BenchContext, p: str, r: int, ref_streams: list[bytes]) -> dict[str, Any]:
    """oscar at precision ``p``, rate ``r``: its own round trip timed, and (p != fp32 ref)
    its decode of the reference precision's streams compared with the reference decode."""
    codec, imgs, n = ctx.codec_for(p), ctx.images, len(ctx.images)
    streams = ref_streams if p == ctx.precisions[0] else encode_each(codec, imgs, r)
    enc = measure(lambda: [codec.compress([i], r) for i in imgs], ctx.repeats, ctx.warmup)
    last: dict[str, list[np.ndarray]] = {}

    def decode(s=streams):
        last["out"] = [codec.decompress([x])[0] for x in s]

    dec = measure(decode, ctx.repeats, ctx.warmup)
    pixels = sum(i.shape[0] * i.shape[1] for i in imgs)
    res = {
        "encode_s": enc.per(n),
        "decode_s": dec.per(n),
        "total_s": enc.per(n) + dec.per(n),
        "bpp": 8 * sum(len(s) for s in streams) / pixels,
        "psnr_db": mean_psnr(imgs, last["out"]),
        "decoded": last["out"],  # dropped before the result is stored
    }
    if p != ctx.precisions[0]:
        ref_codec = ctx.codec_for(ctx.precisions[0])
        ref = [ref_codec.decompress([s])[0].astype(np.int16) for s in ref_streams]
        mine = [codec.decompress([s])[0].astype(np.int16) for s in ref_streams]
        delta = np.concatenate([np.abs(a - b).ravel() for a, b in zip(ref, mine, strict=True)])
        flips = [
            ref_codec.parse(a).indices != ref_codec.parse(b).indices
            for a, b in zip(ref_streams, streams, strict=True)
        ]
        res["decode_delta_levels_mean"] = float(delta.mean())
        res["decode_delta_levels_max"] = int(delta.max())
        res["index_flip_fraction"] = float(np.mean(np.concatenate([f.ravel() for f in flips])))
    return res


def section_peers(ctx: BenchContext) -> SectionResult:
    """3. oscar encode + decode vs bmshj2018-hyperprior (each precision) and Pillow codecs."""
    precs, ref, imgs = ctx.precisions, ctx.precisions[0], ctx.images
    bm = _bmshj(imgs, ctx.repeats, ctx.warmup, precs)
    pil = _pillow(imgs, ctx.repeats, ctx.warmup)
    oscar: dict[str, dict[str, Any]] = {p: {} for p in precs}
    for r in ctx.sample_rates:
        ref_streams = encode_each(ctx.codec_for(ref), imgs, r)
        for p in precs:
            v = _oscar(ctx, p, r, ref_streams)
            v.pop("decoded")
            # ratio to the peer at every precision; "like for like" is the goal's ratio
            v["ratio_to_bmshj"] = {q: v["total_s"] / bm[q]["total_s"] for q in precs}
            v["status"] = verdict(v["ratio_to_bmshj"][p] <= 1)
            oscar[p][str(r)] = v
    ok_all = all(v["status"] == "pass" for p in precs for v in oscar[p].values())

    rows = []
    for r in ctx.sample_rates:
        for p in precs:
            v = oscar[p][str(r)]
            rows.append(
                [f"oscar rate {r} {p}", ms(v["encode_s"]), ms(v["decode_s"]), ms(v["total_s"])]
                + [v["ratio_to_bmshj"][q] for q in precs]
                + [v["bpp"], v["psnr_db"]]
                + [v.get("decode_delta_levels_mean"), v.get("decode_delta_levels_max")]
                + [v.get("index_flip_fraction")]
            )
    for p in precs:
        b = bm[p]
        rows.append([f"bmshj2018-hyperprior q1 {p}", ms(b["encode_s"]), ms(b["decode_s"])])
        rows[-1] += [ms(b["total_s"]), *(b["total_s"] / bm[q]["total_s"] for q in precs)]
        rows[-1] += [b["bpp"], b["psnr_db"], None, None, None]
    for fmt, v in pil.items():
        if "skipped" in v:
            rows.append([fmt, v["skipped"]] + [None] * (7 + len(precs)))
            continue
        tot = v["encode_s"] + v["decode_s"]
        rows.append([f"{fmt} q{v['settings']['quality']}", ms(v["encode_s"]), ms(v["decode_s"])])
        rows[-1] += [ms(tot), *(tot / bm[q]["total_s"] for q in precs), v["bpp"], v["psnr_db"]]
        rows[-1] += [None, None, None]
    size = f"{imgs[0].shape[1]}x{imgs[0].shape[0]}"
    headers = ["codec", "encode", "decode", "total", *(f"x bmshj {q}" for q in precs)]
    headers += ["bpp", "PSNR dB", f"mean abs Δ vs {ref} (levels)", "max abs Δ", "indices changed"]

    def ratios(p: str, q: str) -> str:
        return ", ".join(f"rate {r} {v['ratio_to_bmshj'][q]:.2f}x" for r, v in oscar[p].items())

    measured = [f"{p} vs peer {p}: {ratios(p, p)}" for p in precs]
    measured += [f"{p} vs peer {ref}: {ratios(p, ref)}" for p in precs[1:]]
    res = SectionResult(
        title="Against a learned-codec peer",
        status=verdict(ok_all),
        goal=(
            "oscar-tiny encode + decode <= bmshj2018-hyperprior at the same precision (ratio <= 1)"
        ),
        measured="; ".join(measured),
        note=(
            "B=1 per image, same process and threads; bmshj2018 has random weights "
            "(pretrained=False), so its bpp/PSNR say nothing about quality; input padded to "
            "a multiple of 64; bf16 = torch.autocast(cpu, bfloat16) around both codecs' "
            "encode and decode; the Δ columns: the bf16 decode of the same fp32-encoded "
            "streams vs their fp32 decode; indices changed: a bf16 encoder's VQ indices "
            "that differ from the fp32 encoder's"
            + (f"; {ctx.precision_note}" if ctx.precision_note else "")
        ),
        figures={
            **{
                f"{'' if p == ref else p + '_'}rate{r}_{k}": f(v)
                for p in precs
                for r, v in oscar[p].items()
                for k, f in (
                    ("total_ms", lambda v: 1000 * v["total_s"]),
                    ("ratio", lambda v, p=p: v["ratio_to_bmshj"][p]),
                )
            },
            **{
                f"{p}_rate{r}_ratio_vs_{ref}_peer": v["ratio_to_bmshj"][ref]
                for p in precs[1:]
                for r, v in oscar[p].items()
            },  # fmt: skip
            **{
                ("" if p == ref else f"{p}_") + "bmshj_total_ms": 1000 * bm[p]["total_s"]
                for p in precs
            },  # fmt: skip
        },
        tables=[table(f"Per image, {size}, batch 1 (ms)", headers, rows)],
        details={
            "precisions": list(precs),
            # the reference precision as before (ratio: like for like), then every precision
            "oscar": {
                r: {**v, "ratio_to_bmshj": v["ratio_to_bmshj"][ref]} for r, v in oscar[ref].items()
            },
            "bmshj2018_hyperprior": {**bm[ref], "quality": 1, "pretrained": False},
            "oscar_by_precision": oscar,
            "bmshj2018_hyperprior_by_precision": bm,
            "pillow": pil,
        },
    )
    if not ok_all:
        res.shortfall, res.reason = _shortfall(ctx, oscar, bm)
    return res


def _shortfall(ctx: BenchContext, oscar: dict, bm: dict) -> tuple[str, str]:
    """Per missed precision: the worst rate, its two slowest stages (stage profile, batch 1)
    and what closing the gap takes (ms/image to shed, as a share of the slowest stage)."""
    short, reasons = [], []
    for p, per_rate in oscar.items():
        missed = {r: v for r, v in per_rate.items() if v["status"] != "pass"}
        if not missed:
            continue
        worst = max(missed, key=lambda r: missed[r]["ratio_to_bmshj"][p])
        v = missed[worst]
        short.append(f"{p}: rate {worst} {v['ratio_to_bmshj'][p]:.2f}x the peer's time")
        prof = stage_profile(ctx, int(worst), 1, p)
        sec = prof["seconds"]
        top = sorted(sec, key=sec.get, reverse=True)[:2]
        gf = prof["gflop_per_image"] or {}
        excess = v["total_s"] - bm[p]["total_s"]
        reasons.append(
            f"{p}: "
            + ", ".join(f"{s} {ms(sec[s])} ms ({sec[s] / prof['total_s']:.0%})" for s in top)
            + f"; oscar {sum(gf.values()):.1f} GFLOP/image vs bmshj "
            f"{bm[p]['gflop_per_image']:.1f}; closing it needs {ms(excess)} ms/image less, "
            f"{excess / sec[top[0]]:.0%} of {top[0]}"
        )
    if len(oscar) > 1:
        ref, other = list(oscar)[:2]
        gain = [oscar[ref][r]["total_s"] / oscar[other][r]["total_s"] for r in oscar[ref]]
        span = f"{min(gain):.2f}x" if len(gain) == 1 else f"{min(gain):.2f}-{max(gain):.2f}x"
        peer_gain = bm[ref]["total_s"] / bm[other]["total_s"]
        reasons.append(f"{other} speeds oscar up {span} and the peer {peer_gain:.2f}x")
    return "; ".join(short), "; ".join(reasons)
