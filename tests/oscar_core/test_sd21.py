"""``oscar-sd21`` at full size with random weights on the CPU: build, compress, decompress.

Slow (OSCAR_SLOW=1): the SD-2.1 UNet alone is ~865M parameters (~3.5 GB in fp32). One 64x64
image (8x8 latent) is coded at the lowest and the highest rate. Wall times, peak RSS and
parameter counts are printed (run with ``-s``); docs/sd21-cpu.md records a run.
"""

from __future__ import annotations

import json
import platform
import resource
import time

import numpy as np
import pytest
import torch

from oscar_core import Codec, OscarModel, bitstream, get_config
from tests.conftest import smooth_image

pytestmark = pytest.mark.slow

SIZE = 64  # pixels per side: 8x8 latent, 1x1 codes at rate 0, no padding at any rate
RATES = (0, 7)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def n_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def param_counts(model: OscarModel) -> dict[str, int]:
    unet = model.denoiser.unet
    lora = sum(p.numel() for name, p in unet.named_parameters() if "lora_" in name)
    return {
        "autoencoder": n_params(model.autoencoder),
        "hyper_encoders_total": n_params(model.hypers),
        **{f"hyper_{r}": n_params(h) for r, h in enumerate(model.hypers)},
        "unet_total": n_params(unet),
        "unet_base": n_params(unet) - lora,
        "unet_lora": lora,
        "embedding": model.denoiser.embedding.numel(),
        "total": n_params(model),
        "trainable": n_params(model, trainable_only=True),
    }


@pytest.fixture(scope="module")
def sd21():
    """The codec, plus a dict that the tests fill with measurements (printed at teardown)."""
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = OscarModel(get_config("oscar-sd21"))
    codec = Codec(model)
    stats: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "peak_rss_mib_before_build": round(rss_before, 1),
        "build_s": round(time.perf_counter() - start, 2),
        "peak_rss_mib_after_build": round(peak_rss_mib(), 1),
        "params": param_counts(model),
        "rates": {},
    }
    yield codec, stats
    stats["peak_rss_mib_end"] = round(peak_rss_mib(), 1)
    print("\nSD21_STATS " + json.dumps(stats, indent=2))


def test_sd21_structure(sd21):
    codec, stats = sd21
    model = codec.model
    params = stats["params"]
    assert len(model.hypers) == 8 and len(codec.ladder) == 8
    assert 800e6 < params["unet_base"] < 900e6  # SD-2.1 UNet: 865.9M
    assert params["unet_lora"] > 0 and params["embedding"] == 77 * 1024
    assert set(model.denoiser.lora_groups) == {
        "default_encoder",
        "default_decoder",
        "default_others",
    }
    assert all(model.denoiser.lora_groups[a] for a in model.denoiser.lora_groups)
    # frozen base UNet, trainable LoRA + conv_in (LoRA setup as in the reference)
    unet = model.denoiser.unet
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("conv_in") for n in trainable)
    assert model.pad_multiple(0) == 64 and model.pad_multiple(7) == 64


@pytest.mark.parametrize("rate_index", RATES)
def test_sd21_round_trip(sd21, rate_index):
    codec, stats = sd21
    image = smooth_image(SIZE, SIZE, seed=rate_index)

    start = time.perf_counter()
    (stream,) = codec.compress([image], rate_index)
    compress_s = time.perf_counter() - start
    rss_compress = peak_rss_mib()

    header, payload = bitstream.unpack(stream)
    assert header.rate_index == rate_index and header.model_id == codec.model_id
    assert (header.height, header.width) == (SIZE, SIZE)
    assert (header.latent_h, header.latent_w) == (SIZE // 8, SIZE // 8)
    parsed = codec.parse(stream)
    d = codec.ladder[rate_index].downsample
    assert parsed.indices.shape == (SIZE // 8 // d, SIZE // 8 // d)

    start = time.perf_counter()
    (decoded,) = codec.decompress([stream])
    decompress_s = time.perf_counter() - start

    assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.uint8
    stats["rates"][rate_index] = {
        "compress_s": round(compress_s, 3),
        "decompress_s": round(decompress_s, 3),
        "bytes": len(stream),
        "payload_bytes": len(payload),
        "peak_rss_mib_after_compress": round(rss_compress, 1),
        "peak_rss_mib_after_decompress": round(peak_rss_mib(), 1),
    }
