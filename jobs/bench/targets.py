"""Benchmark section 10: quality-targeted encoding (``--target``) against one fixed rate for
all images: time per image, bytes, and whether each image got the lowest rate that meets the
target (brute force over the whole ladder)."""

from __future__ import annotations

import time

from jobs.bench.common import BenchContext, SectionResult, table, verdict

# Two targets inside the shipped oscar-tiny's range on photos (PSNR 17-22 dB, MS-SSIM
# 0.47-0.81 over the ladder on Kodak): different images need different rates for them
TARGETS = ("psnr>=20.5", "ms-ssim>=0.75")


def section_targets(ctx: BenchContext) -> SectionResult:
    """10. Targeted vs fixed-rate encoding at two targets: seconds per image, bytes against
    the lowest single rate that meets the target for every image that can meet it, trials
    per image, and images given a higher rate than needed (none, where quality is monotone)."""
    from oscar_core.target import Target, TargetSummary, compress_to_target, outcome_of

    codec, images = ctx.codec, ctx.images
    n = len(images)
    # the truth: every image at every rate (bytes and decoded image), once
    streams = {r.index: codec.compress(images, r.index) for r in codec.ladder}
    decoded = {r: codec.decompress(s) for r, s in streams.items()}
    per_target, rows, all_ok = {}, [], True
    for text in TARGETS:
        target = Target.parse(text)
        quality = {
            r: [target.measure(a, b) for a, b in zip(images, d, strict=True)]
            for r, d in decoded.items()
        }
        t0 = time.perf_counter()
        found = compress_to_target(codec, images, target)
        targeted_s = (time.perf_counter() - t0) / n
        summary = TargetSummary.of(
            target,
            [outcome_of(f, a.shape[0] * a.shape[1]) for f, a in zip(found, images, strict=True)],
        )
        single = summary.single_rate.rate_index
        t0 = time.perf_counter()
        codec.compress(images, single)
        fixed_s = (time.perf_counter() - t0) / n
        single_bytes = sum(len(s) for s in streams[single])  # exact: every image coded at it
        higher, monotone = 0, 0
        for i, f in enumerate(found):
            column = [quality[r][i] for r in sorted(quality)]
            lowest = next((r for r, q in enumerate(column) if target.met_by(q)), len(column) - 1)
            higher += f.rate.index > lowest
            monotone += all(a <= b + 1e-9 for a, b in zip(column[:-1], column[1:], strict=True))
        saved = 1 - summary.bytes / single_bytes
        ok = higher == 0 or monotone < n
        all_ok &= ok
        per_target[text] = {
            "images": n,
            "met": summary.met,
            "rates": summary.rates,
            "mean_trials": summary.mean_trials,
            "targeted_s_per_image": targeted_s,
            "fixed_s_per_image": fixed_s,
            "time_ratio": targeted_s / fixed_s,
            "bytes_targeted": summary.bytes,
            "single_rate": single,
            "bytes_single_rate": single_bytes,
            "bytes_single_rate_priced_from_trials": summary.single_rate.bytes,
            "saved_fraction": saved,
            "higher_than_needed": higher,
            "quality_monotone_images": monotone,
        }
        rates = ", ".join(f"{k}: {v}" for k, v in summary.rates.items())
        rows.append(
            [text, n, summary.met, rates, summary.mean_trials, targeted_s, fixed_s]
            + [targeted_s / fixed_s, summary.bytes, single, single_bytes, 100 * saved, higher]
        )
    headers = ["target", "images", "met", "rates chosen (rate: images)", "trials/image"]
    headers += ["targeted s/image", "fixed s/image", "time x", "bytes", "single rate"]
    headers += ["bytes at it", "saved %", "higher than needed"]
    return SectionResult(
        title="Quality-targeted encoding",
        status="info" if all_ok else verdict(False),
        measured="; ".join(
            f"{t}: {v['saved_fraction']:.1%} fewer bytes than rate {v['single_rate']} for all, "
            f"{v['time_ratio']:.1f}x the time, {v['mean_trials']:.2f} trials/image"
            for t, v in per_target.items()
        ),
        goal="every image at the lowest rate meeting the target (where quality is monotone in the rate)",
        method=(
            f"{n} images; each coded at every ladder rate once (the truth); targeted = "
            "oscar_core.target.compress_to_target (binary search over the ladder, each trial an "
            "encode + decode + metric, images of one size batched), fixed = Codec.compress at "
            "the single rate, one run each (wall time / images); bytes at the single rate are "
            "exact (every image coded at it)"
        ),
        figures={
            f"{t.split('>=')[0]}_{k}": float(v[k])
            for t, v in per_target.items()
            for k in ("bytes_targeted", "bytes_single_rate")
        },
        tables=[table("Targeted vs one rate for all images", headers, rows)],
        details={"per_target": per_target},
    )
