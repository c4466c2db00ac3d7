"""``oscar bench``: a quick run of the codec sections on a tiny random model, and the DDIM
decoder of section 1 checked on its own (50 UNet calls, from t_r down to t = 0, and the same
numbers as diffusers' stock DDIM loop where that loop can express the trajectory).

The bench run happens once per module, in this process (the imports are paid once), with
one torch thread; the previous thread count is restored afterwards.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.bench.job import parse_sections
from jobs.bench.one_step import DDIM_STEPS, DDIMDecoder
from jobs.cli import main as cli
from oscar_core import Codec
from oscar_core.precision import cpu_supports_bf16
from tests.conftest import smooth_image

SECTIONS = [1, 2, 3, 7, 10, 11]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(tmp / "m")
    (tmp / "images").mkdir()
    Image.fromarray(smooth_image(64, 64, seed=3)).save(tmp / "images" / "synthetic.png")
    rc = cli.main(
        ["bench", "--quick", "--model", str(tmp / "m"), "--images", str(tmp / "images")]
        + ["--out", str(tmp / "out"), "--sections", ",".join(map(str, SECTIONS))]
        + ["--threads", "1"]
    )
    return rc, tmp / "out"


def test_writes_json_and_markdown(bench_run):
    rc, out = bench_run
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert [s["section"] for s in data["sections"]] == SECTIONS
    for s in data["sections"]:
        assert s["status"] in {"pass", "miss", "info"}, (s["section"], s["status"])
        assert s["title"] in md
        assert "tables" not in s  # tables go to the markdown only
    assert "## Summary" in md and "QUICK MODE" in md
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert [ln.split("|")[1].strip() for ln in summary.splitlines() if ln.startswith("| ")][1:] == [
        str(n) for n in SECTIONS
    ]
    assert data["quick"] is True
    machine = data["machine"]
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1
    assert machine["torch_threads"] == 1
    for dist in ("torch", "compressai", "diffusers"):
        assert machine["versions"][dist]
    assert data["date"] and data["settings"]["repeats"] == 2
    assert data["images"]["sizes"] == [[64, 64]]


def test_figures_positive_and_finite(bench_run):
    _, out = bench_run
    data = json.loads((out / "bench.json").read_text())
    for s in data["sections"]:
        assert s["figures"], s["section"]
        for name, value in s["figures"].items():
            assert isinstance(value, int | float), (s["section"], name, value)
            assert math.isfinite(value) and value > 0, (s["section"], name, value)


def test_section_contents(bench_run):
    _, out = bench_run
    sections = {s["section"]: s for s in json.loads((out / "bench.json").read_text())["sections"]}
    one = next(iter(sections[1]["per_rate"].values()))
    assert one["unet_calls"] == DDIM_STEPS and one["ddim_end_t"] == 0
    assert one["ideal_ratio"] > 1 and one["ratio"] > 1
    assert sections[2]["bottleneck"] in sections[2]["stage_notes"]
    assert sections[2]["best_batch"] in (1, 2)
    peer = sections[3]
    assert peer["bmshj2018_hyperprior"]["encode_s"] > 0
    assert {"JPEG", "WEBP", "AVIF"} <= set(peer["pillow"])
    # fp32 and, where the CPU has native bf16, bf16 rows measured side by side
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    assert sections[2]["precisions"] == precisions == peer["precisions"]
    assert set(sections[2]["by_precision"]) == set(precisions)
    assert set(peer["bmshj2018_hyperprior_by_precision"]) == set(precisions)
    for p in precisions:
        for v in peer["oscar_by_precision"][p].values():
            assert set(v["ratio_to_bmshj"]) == set(precisions) and v["total_s"] > 0
    if "bf16" in precisions:
        bf16 = next(iter(peer["oscar_by_precision"]["bf16"].values()))
        assert 0 <= bf16["decode_delta_levels_mean"] <= 2  # of 255 levels
        assert 0 <= bf16["index_flip_fraction"] <= 1
        assert sections[2]["figures"]["bf16_speedup"] > 0
    else:
        assert "bf16 not measured" in sections[2]["note"]
    gain = next(iter(sections[7]["per_rate"].values()))
    assert gain["context_bits_per_image"] is None  # a random model has no context model
    assert gain["coded_bits_per_image"] <= gain["uniform_bits_per_image"]  # the cheapest
    assert gain["fixed_bits_per_image"] == gain["symbols_per_image"] * math.ceil(
        math.log2(gain["K"])
    )
    assert sections[7]["indices_identical"] is True
    assert sections[7]["status"] == "miss" and "no context model" in sections[7]["reason"]
    for target in ("psnr>=20.5", "ms-ssim>=0.75"):
        t = sections[10]["per_target"][target]
        assert t["images"] == 1 and sum(t["rates"].values()) == 1
        assert t["higher_than_needed"] == 0 or t["quality_monotone_images"] == 0
        assert t["bytes_targeted"] > 0 and t["bytes_single_rate"] > 0
    read = sections[11]["figures"]
    assert read["archive_images_per_s"] > 0 and read["png_images_per_s"] > 0
    assert read["archive_bytes"] < read["png_bytes"]  # bitstreams are smaller than PNGs


@pytest.fixture(scope="module")
def codec():
    return Codec.from_config("oscar-tiny", seed=0)


def test_ddim_calls_the_unet_50_times_down_to_zero(codec):
    rate = codec.ladder[3]
    streams = codec.compress([smooth_image(64, 64, seed=1)], rate.index)
    calls: list[int] = []

    def hook(module, args, kwargs, output):
        calls.append(int(args[1][0]) if len(args) > 1 else int(kwargs["timestep"][0]))

    handle = codec.model.denoiser.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        ddim = DDIMDecoder(codec)
        with torch.inference_mode():
            images = ddim.decode(streams)
    finally:
        handle.remove()
    assert len(calls) == DDIM_STEPS == 50
    assert calls[0] == rate.t and all(a > b > 0 for a, b in zip(calls, calls[1:], strict=False))
    assert ddim.last_trajectory == {"unet_timesteps": calls, "end_t": 0}
    sched, taus = ddim.scheduler(rate.t)
    assert taus[0] == 0 and taus[-1] == rate.t
    # the last step lands on abar(0) of the model's schedule, not on "clean" (abar = 1)
    assert float(sched.alphas_cumprod[0]) == float(codec.model.denoiser.alphas_cumprod[0])
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8


def test_ddim_matches_stock_diffusers_loop_on_an_integer_grid(codec):
    """t_r = 500: the trajectory 500, 490, ..., 10 -> 0 is also stock DDIM with 100 steps."""
    from diffusers import DDIMScheduler

    den = codec.model.denoiser
    cfg = den.config
    stock = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
    )
    stock.set_timesteps(100)
    torch.manual_seed(0)
    x_t = torch.randn(1, 4, 8, 8)
    tokens = den.embedding[None]
    with torch.inference_mode():
        ours = DDIMDecoder(codec).sample(x_t, 500)
        x = x_t
        for t in [int(t) for t in stock.timesteps if 0 < t <= 500]:
            v = den.unet(x, torch.tensor([t]), encoder_hidden_states=tokens).sample
            x = stock.step(v, t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)


def test_parse_sections():
    assert parse_sections(None) == list(range(1, 13))
    assert parse_sections("7,1, 2") == [1, 2, 7]
    for bad in ("13", "0", "a", ","):
        with pytest.raises(ValueError):
            parse_sections(bad)


def test_pipeline_sections_say_not_run_when_pipeline_is_missing(monkeypatch, tmp_path):
    from jobs.bench import shards
    from jobs.bench.common import BenchContext
    from jobs.bench.decode_memory import section_decode_memory
    from jobs.bench.efficiency import section_efficiency
    from jobs.bench.memory import section_memory

    monkeypatch.setattr(shards, "pipeline_api", lambda: (None, "pipeline missing (x)"))
    ctx = BenchContext(
        model_dir=tmp_path,
        codec=None,
        images=[],
        image_names=[],
        rates=[3],
        repeats=1,
        warmup=0,
        quick=True,
        threads=1,
        batch_sizes=(1,),
        work_dir=tmp_path,
    )
    for fn in (section_efficiency, section_memory, section_decode_memory):
        res = fn(ctx).to_json()  # its bench.json entry
        assert res["status"] == "not run: pipeline missing (x)"
        assert res["figures"] == {} and res["measured"] is None and res["todo"]
