"""``oscar-sd21`` at full size on the CPU: import, load, compress, decompress at 256x256.

Slow (OSCAR_SLOW=1). An SD-2.1-sized base with random weights is saved as a diffusers
directory, a full-size reference checkpoint (N=192, M=320 hyper-encoders with attention,
rank-16 LoRA) is written the way the reference saves one, and ``oscar import-reference``
turns them into a model directory. Wall times, peak RSS, sizes and the merged-vs-unmerged
LoRA decode times are printed as ``SD21_STATS`` (run with ``-s``); docs/sd21-cpu.md records a
run. Random weights: this measures time and memory, not quality.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time

import numpy as np
import pytest
import torch

from jobs.cli.main import main
from oscar_core import Codec, bitstream
from oscar_core.reference import load_reference, read_checkpoint
from tests.conftest import smooth_image
from tests.reference_fixtures import ReferenceOscar, make_sd21_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]

SIZE = 256  # pixels per side: 32x32 latent
RATES = (0, 7)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def sd21(tmp_path_factory):
    """(codec of the imported directory, checkpoint path, sd21 dir, stats dict)."""
    root = tmp_path_factory.mktemp("sd21")
    stats: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "rates": {},
    }
    start = time.perf_counter()
    sd21_dir = make_sd21_dir(root / "sd21", full=True)
    ref = ReferenceOscar(sd21_dir, widths=(192, 320), rank=16)
    torch.save(ref.checkpoint(), root / "oscar.pkl")
    del ref
    stats["make_inputs_s"] = round(time.perf_counter() - start, 1)
    stats["checkpoint_mib"] = round((root / "oscar.pkl").stat().st_size / 2**20, 1)
    out = root / "model"
    start = time.perf_counter()
    args = ["import-reference", "--sd21", str(sd21_dir), "--checkpoint", str(root / "oscar.pkl")]
    assert main([*args, "--allow-pickle", "--out", str(out), "--dtype", "fp16"]) == 0
    stats["import_s"] = round(time.perf_counter() - start, 1)
    stats["model_dir_mib"] = round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 1)
    stats["peak_rss_mib_after_import"] = round(peak_rss_mib(), 1)
    start = time.perf_counter()
    codec = Codec.from_pretrained(out, batch_size=1)  # no SD-2.1 directory involved
    stats["load_s"] = round(time.perf_counter() - start, 1)
    stats["params"] = {
        "autoencoder": n_params(codec.model.autoencoder),
        "unet (LoRA merged)": n_params(codec.model.denoiser.unet),
        "hyper_encoders": n_params(codec.model.hypers),
        "total": n_params(codec.model),
    }
    yield codec, root / "oscar.pkl", sd21_dir, stats
    stats["peak_rss_mib_end"] = round(peak_rss_mib(), 1)
    stats["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    print("\nSD21_STATS " + json.dumps(stats, indent=2))


def test_sd21_structure(sd21):
    codec, _, _, stats = sd21
    assert 800e6 < stats["params"]["unet (LoRA merged)"] < 900e6  # SD-2.1 UNet: 865.9M
    assert codec.model.config.denoiser.lora_rank == 0  # merged: a plain UNet
    assert codec.model.config.hyper.N == 192 and codec.model.config.hyper.M == 320
    assert [r.t for r in codec.ladder] == [500, 400, 310, 280, 210, 190, 170, 150]


@pytest.mark.parametrize("rate_index", RATES)
def test_sd21_round_trip(sd21, rate_index):
    codec, _, _, stats = sd21
    image = smooth_image(SIZE, SIZE, seed=rate_index)
    times = {}
    for run in ("first", "warm"):
        start = time.perf_counter()
        (stream,) = codec.compress([image], rate_index)
        times[f"compress_{run}_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        (decoded,) = codec.decompress([stream])
        times[f"decompress_{run}_s"] = round(time.perf_counter() - start, 3)
    header, payload = bitstream.unpack(stream, codec.model_id)
    assert header.rate_index == rate_index and decoded.shape == (SIZE, SIZE, 3)
    stats["rates"][rate_index] = {**times, "bytes": len(stream), "payload_bytes": len(payload),
                                  "peak_rss_mib": round(peak_rss_mib(), 1)}  # fmt: skip


def test_sd21_merged_lora_speedup(sd21):
    codec, checkpoint, sd21_dir, stats = sd21
    unmerged, _ = load_reference(read_checkpoint(checkpoint, allow_pickle=True), sd21_dir)
    lora = Codec(unmerged, batch_size=1)
    parsed = [codec.parse(s) for s in codec.compress([smooth_image(SIZE, SIZE, seed=9)], 7)]
    timing = {}
    for name, c in (("merged", codec), ("unmerged", lora), ("merged_again", codec)):
        c.decode_parsed(parsed)  # warm-up
        start = time.perf_counter()
        for _ in range(2):
            out = c.decode_parsed(parsed)[0]
        timing[name] = (time.perf_counter() - start) / 2
        timing[f"{name}_pixels"] = out.astype(int)
    diff = np.abs(timing["merged_pixels"] - timing["unmerged_pixels"])
    stats["lora_decode_s"] = {k: round(v, 3) for k, v in timing.items() if k.endswith(("merged", "again"))}  # fmt: skip
    stats["lora_speedup"] = round(
        timing["unmerged"] / min(timing["merged"], timing["merged_again"]), 3
    )
    stats["merged_vs_unmerged_max_level_diff"] = int(diff.max())
    stats["merged_vs_unmerged_mean_level_diff"] = round(float(diff.mean()), 4)
    # the directory stores fp16 weights, the unmerged model fp32 ones: a level or two (the
    # fp32 merge itself is checked to one level in test_reference.py)
    assert diff.max() <= 3 and diff.mean() < 0.05
