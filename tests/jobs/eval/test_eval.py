"""``oscar eval``: the job end to end on a tiny random model, and the quality search.

One module-scoped run (2 synthetic 64x96 images, rates 2 and 7, JPEG + AVIF) feeds the
output tests. At 64x96 neither codec reaches OSCAR's bpp at full size (their container
and header bytes alone are above it), so the downscaled variants must appear; the search
itself is tested on a synthetic quality -> bpp table and on real JPEG / AVIF encodes.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from jobs.eval.codecs import CODECS, Encoded, QualityTable, availability, search_not_above
from jobs.eval.metrics import METRICS, flip, ssimulacra2
from oscar_core.metrics import ms_ssim, psnr
from tests.conftest import smooth_image

RATES = (2, 7)
CODECS_RUN = ("jpeg", "avif")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    from jobs.eval.job import EvalConfig
    from jobs.eval.job import run as run_eval
    from oscar_core import Codec

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("eval")
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(tmp / "m")
    (tmp / "img").mkdir()
    for seed in (0, 1):
        Image.fromarray(smooth_image(64, 96, seed)).save(tmp / "img" / f"s{seed}.png")
    out = tmp / "out"
    rc = run_eval(
        EvalConfig(
            [str(tmp / "img")], model=str(tmp / "m"), out=str(out), rates="2,7", codecs="jpeg,avif"
        )
    )
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {"rc": rc, "out": out, "rows": rows, "tmp": tmp}


def test_outputs_exist(run):
    assert run["rc"] == 0
    for name in ("results.csv", "summary.json", "summary.md", "rd.png", "contact_sheet.png"):
        assert (run["out"] / name).stat().st_size > 0, name
    for name in ("rd.png", "contact_sheet.png"):
        with Image.open(run["out"] / name) as img:
            assert img.width > 100 and img.height > 100


def test_csv_has_every_image_codec_and_rate(run):
    rows = run["rows"]
    assert {r["image"] for r in rows} == {"s0", "s1"}
    assert {r["codec"] for r in rows} == {"oscar", *CODECS_RUN}
    for image in ("s0", "s1"):
        for codec in ("oscar", *CODECS_RUN):
            got = {int(r["rate"]) for r in rows if r["image"] == image and r["codec"] == codec}
            assert got == set(RATES), (image, codec)
    oscar = [r for r in rows if r["codec"] == "oscar"]
    assert len(oscar) == 4 and all(r["reached"] == "True" for r in oscar)
    for r in oscar:  # OSCAR's bpp is measured from its bitstream and is the target
        assert float(r["bpp"]) == pytest.approx(8 * int(r["bytes"]) / (64 * 96))
        assert float(r["target_bpp"]) == pytest.approx(float(r["bpp"]))


def test_classic_rows_never_above_target(run):
    classic = [r for r in run["rows"] if r["codec"] != "oscar"]
    assert classic
    for r in classic:
        assert r["reached"] in ("True", "False")
        if r["reached"] == "True":
            assert float(r["bpp"]) <= float(r["target_bpp"]) + 1e-12, r
        else:  # cannot reach: the lowest setting is reported, above the target, no metrics
            q_min = CODECS[r["codec"]].q_min
            assert int(r["quality"]) == q_min and float(r["bpp"]) > float(r["target_bpp"])
            assert r["psnr"] == "" and r["ssimulacra2"] == ""


def test_smaller_variants_follow_the_walk(run):
    """Per image, codec and rate: 1, 1/2, 1/4, 1/8, 1/16 in order, the next tried exactly when
    this one cannot reach, or reaches at a low setting scoring better than the last that
    reached (``compare.py``)."""
    from jobs.eval.compare import LOW_SETTING

    rows, scales = run["rows"], (1, 2, 4, 8, 16)
    for codec in CODECS_RUN:
        cc = CODECS[codec]
        low = cc.q_min + LOW_SETTING * (cc.q_max - cc.q_min)
        for image in ("s0", "s1"):
            for rate in RATES:
                mine = {
                    r["variant"]: r
                    for r in rows
                    if (r["image"], r["codec"], int(r["rate"])) == (image, codec, rate)
                }
                names = [codec if k == 1 else f"{codec}@1/{k}" for k in scales]
                expected, last = [], None
                for name in names:
                    expected.append(name)
                    row = mine[name]
                    if row["reached"] == "False":
                        continue
                    score = float(row["ssimulacra2"])
                    if (last is not None and score <= last) or int(row["quality"]) > low:
                        break
                    last = score
                assert list(mine) == expected, (image, codec, rate)
    # at 64x96 neither codec reaches at full size: the smaller variants are tried
    assert {"jpeg@1/2", "jpeg@1/16", "avif@1/2", "avif@1/16"} <= {r["variant"] for r in rows}


def test_best_rival_is_the_best_of_every_codec(run):
    summary = json.loads((run["out"] / "summary.json").read_text())
    for point in summary["per_rate"]:
        rival, avif = point["rival"], point["versus"]
        assert rival["codec"] == "rival" and rival["n_images"] == 2
        assert sum(rival["variants"].values()) == rival["n_compared"]
        assert rival["n_compared"] >= avif["n_compared"]
        if rival["n_compared"] == avif["n_compared"] == 2:  # the same images: never worse
            assert rival["rival_ssimulacra2"] >= avif["avif_ssimulacra2"] - 1e-9
    assert "OSCAR vs the best rival" in (run["out"] / "summary.md").read_text()


def test_metrics_finite_and_in_range(run):
    for r in run["rows"]:
        if r["reached"] != "True":
            continue
        for name in ("psnr", "ms-ssim", "ssimulacra2", "flip"):
            spec = METRICS[name]
            value = float(r[spec.column])
            assert math.isfinite(value), (name, r)
            assert spec.lo <= value <= spec.hi, (name, value)
        assert float(r["enc_ms"]) > 0 and float(r["dec_ms"]) > 0


def test_summary(run):
    summary = json.loads((run["out"] / "summary.json").read_text())
    assert [p["rate"] for p in summary["per_rate"]] == list(RATES)
    for point in summary["per_rate"]:
        assert point["curves"]["oscar"]["n_reached"] == 2
        assert point["versus"]["codec"] == "avif"
        assert point["versus"]["n_images"] == 2
    assert any("lpips: skipped" in note for note in summary["notes"])
    assert summary["timing_s"]["per_image_s"] > 0
    md = (run["out"] / "summary.md").read_text()
    assert "OSCAR vs AVIF" in md and "Rate 7" in md


def test_cli_eval_and_bad_inputs(run, tmp_path, capsys):
    """Through ``oscar eval``: a larger image that AVIF does reach, one missing input, bad args."""
    from jobs.cli.main import main

    tmp = run["tmp"]
    Image.fromarray(smooth_image(192, 256, 5)).save(tmp_path / "big.png")
    common = ["--model", str(tmp / "m"), "--rates", "7", "--codecs", "avif", "--downscales", ""]
    missing = str(tmp_path / "nope.png")
    rc = main(["eval", str(tmp_path / "big.png"), missing, "--out", str(tmp_path / "o"), *common])
    assert rc == 2  # the good image is still evaluated
    assert f"oscar: error: {missing}: no such file" in capsys.readouterr().err
    with (tmp_path / "o" / "results.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"oscar", "avif"}  # reached at full size: no variants
    avif = rows["avif"]
    assert avif["reached"] == "True" and float(avif["bpp"]) <= float(avif["target_bpp"])
    for name in ("psnr", "ms-ssim", "ssimulacra2", "flip"):
        spec = METRICS[name]
        assert spec.lo <= float(avif[spec.column]) <= spec.hi
    bad = ["eval", str(tmp / "img"), "--out", str(tmp_path / "o2"), "--model", str(tmp / "m")]
    assert main([*bad, "--codecs", "bpg"]) == 2
    assert 'unknown codec "bpg"' in capsys.readouterr().err
    assert main([*bad, "--metrics", "lpips"]) == 2
    assert "--lpips-weights" in capsys.readouterr().err
    assert main([*bad, "--rates", "9"]) == 2


# -- the quality search ----------------------------------------------------------------


def fake_table(bpps: dict[int, float]):
    """quality -> bpp lookup with a call counter, shaped like QualityTable.get."""
    known: dict[int, Encoded] = {}

    def get(q: int) -> Encoded:
        if q not in known:
            known[q] = Encoded(q, b"", bpps[q], 0.0)
        return known[q]

    return get, known


def brute_force(bpps: dict[int, float], target: float) -> int | None:
    fitting = [q for q, b in bpps.items() if b <= target]
    return max(fitting, key=lambda q: (bpps[q], q)) if fitting else None


def test_search_finds_closest_not_above_on_monotone_table():
    bpps = {q: 0.05 + 0.01 * (q // 3) for q in range(0, 101)}  # plateaus of 3
    get, known = fake_table(bpps)
    for target in (0.0499, 0.05, 0.123, 0.2, 0.3333, 0.38, 1.0):
        hit = search_not_above(get, 0, 100, target, known)
        want = brute_force(bpps, target)
        if want is None:
            assert hit is None
        else:
            assert hit.bpp <= target and hit.bpp == bpps[want]
    assert len(known) <= 45  # 7 targets share one table: far fewer than 7 x 101 encodes


def test_search_never_returns_above_target_with_dips():
    rng = np.random.default_rng(0)
    bpps = {q: 0.1 + 0.02 * q + rng.uniform(-0.03, 0.03) for q in range(1, 101)}
    for target in rng.uniform(0.05, 2.2, 40):
        get, known = fake_table(bpps)
        hit = search_not_above(get, 1, 100, float(target), known)
        if hit is None:
            assert bpps[1] > target
        else:
            assert hit.bpp <= target
            assert hit.bpp == max(e.bpp for e in known.values() if e.bpp <= target)


@pytest.mark.parametrize("name", CODECS_RUN)
def test_real_codec_bpp_monotone_and_search(name):
    assert availability(name) is None
    codec = CODECS[name]
    img = smooth_image(96, 128, 3)
    table = QualityTable(codec, img)
    qs = [codec.q_min, 20, 40, 60, 80, codec.q_max]
    bpps = [table.get(q).bpp for q in qs]
    assert bpps == sorted(bpps), bpps  # more quality, more bits (coarsely)
    target = (bpps[2] + bpps[3]) / 2
    hit = table.search(target)
    assert hit is not None and hit.bpp <= target
    assert 40 <= hit.quality <= 60
    assert not any(hit.bpp < e.bpp <= target for e in table.entries.values())
    assert table.search(bpps[0] * 0.99) is None  # below the lowest setting
    decoded, ms = table.decode(hit.quality)
    assert decoded.shape == img.shape and ms >= 0
    half = QualityTable(codec, img, scale=2)  # variant: coded small, measured at full size
    assert half.name == f"{name}@1/2" and half.source.shape == (48, 64, 3)
    assert half.decode(codec.q_max)[0].shape == img.shape
    assert half.get(codec.q_min).bpp == 8 * len(half.get(codec.q_min).data) / (96 * 128)


def test_metrics_on_identical_and_small_images():
    a = smooth_image(64, 96, 0)
    b = smooth_image(64, 96, 1)
    assert psnr(a, a) == 100.0 and 0 < psnr(a, b) < 100
    assert ms_ssim(a, a) == pytest.approx(1.0) and 0 <= ms_ssim(a, b) < 1
    assert math.isnan(ms_ssim(a[:32, :32], b[:32, :32]))  # too small for any window
    assert ssimulacra2(a, a) == pytest.approx(100.0) and ssimulacra2(a, b) < 100
    assert flip(a, a) == 0.0 and 0 < flip(a, b) <= 1
    assert "unknown codec" in availability("bpg")


def test_lpips_only_from_local_weights(tmp_path):
    """No weights are downloaded: a torchvision AlexNet state dict (here random) is loaded."""
    import torch
    import torchvision

    from jobs.common.lpips import Lpips
    from jobs.eval.metrics import build_metrics

    with pytest.raises(ValueError, match="--lpips-weights"):
        build_metrics(["lpips"])
    features = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "alex.pth")
    metric = Lpips(tmp_path / "alex.pth")
    a, b = smooth_image(64, 96, 0), smooth_image(64, 96, 1)
    assert metric(a, a) == pytest.approx(0.0, abs=1e-6) and metric(a, b) > 0
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not AlexNet"):
        Lpips(tmp_path / "other.pth")


def test_walk_past_a_variant_that_cannot_reach(tmp_path):
    """A noisy 384x512 image: full-size JPEG cannot get down to rate 2's bytes, a smaller
    variant can; the walk reports the first as not reached and goes on (a regression: the
    unreached row's lowest setting once overwrote the walk's 'low setting' bound)."""
    from jobs.eval.job import EvalConfig
    from jobs.eval.job import run as run_eval
    from oscar_core import Codec

    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(tmp_path / "m")
    noise = np.random.default_rng(3).integers(0, 256, (384, 512, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    out = tmp_path / "out"
    config = EvalConfig([str(tmp_path / "noise.png")], model=str(tmp_path / "m"), out=str(out),
                        rates="2", codecs="jpeg", metrics="psnr", downscales="2,4,8")  # fmt: skip
    assert run_eval(config) == 0
    with (out / "results.csv").open() as f:
        reached = [r["reached"] == "True" for r in csv.DictReader(f) if r["codec"] == "jpeg"]
    assert reached[0] is False and True in reached
