"""``oscar-sd21`` at full size with random weights on the CPU: build, compress, decompress.

Slow (OSCAR_SLOW=1): the SD-2.1 UNet alone is ~865M parameters (~3.5 GB in fp32). One 64x64
image (8x8 latent) is coded at the lowest and the highest rate. Wall times, peak RSS and
parameter counts are printed (run with ``-s``); docs/sd21-cpu.md records a run.
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

from oscar_core import Codec, OscarModel, bitstream, get_config
from tests.conftest import smooth_image

pytestmark = [
    pytest.mark.slow,
    # peft warns on every adapter after the first; three adapters are intended (see denoiser.py)
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]

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
    built = time.perf_counter()
    codec = Codec(model)  # hashes every weight for the model id
    stats: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "peak_rss_mib_before_build": round(rss_before, 1),
        "build_model_s": round(built - start, 2),
        "codec_init_s": round(time.perf_counter() - built, 2),
        "peak_rss_mib_after_build": round(peak_rss_mib(), 1),
        "params": param_counts(model),
        "rates": {},
    }
    yield codec, stats
    stats["peak_rss_mib_end"] = round(peak_rss_mib(), 1)
    stats["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]  # other processes
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

    header, payload = bitstream.unpack(stream, codec.model_id)
    assert header.rate_index == rate_index
    assert (header.height, header.width) == (SIZE, SIZE)
    parsed = codec.parse(stream)
    d = codec.ladder[rate_index].downsample
    assert parsed.indices.shape == (SIZE // 8 // d, SIZE // 8 // d)

    start = time.perf_counter()
    (decoded,) = codec.decompress([stream])
    decompress_s = time.perf_counter() - start

    # second calls: no one-time set-up (oneDNN primitives, CDF tables), same output
    start = time.perf_counter()
    assert codec.compress([image], rate_index) == [stream]
    compress_warm_s = time.perf_counter() - start
    start = time.perf_counter()
    np.testing.assert_array_equal(codec.decompress([stream])[0], decoded)
    decompress_warm_s = time.perf_counter() - start

    assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.uint8
    stats["rates"][rate_index] = {
        "compress_s": round(compress_s, 3),
        "decompress_s": round(decompress_s, 3),
        "compress_warm_s": round(compress_warm_s, 3),
        "decompress_warm_s": round(decompress_warm_s, 3),
        "bytes": len(stream),
        "payload_bytes": len(payload),
        "peak_rss_mib_after_compress": round(rss_compress, 1),
        "peak_rss_mib_after_decompress": round(peak_rss_mib(), 1),
    }


def test_sd21_lora_adapters_are_active(sd21):
    # LoRA B starts at zero (no effect); a nonzero B in any of the three adapters must change
    # the denoiser's output, i.e. every adapter is injected and enabled. Restored afterwards.
    codec, _ = sd21
    denoiser = codec.model.denoiser
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=gen)
    t_r = torch.tensor([codec.ladder[0].t])
    with torch.inference_mode():
        base = denoiser(x_t, t_r)
    for adapter in ("default_encoder", "default_decoder", "default_others"):
        weights = [p for n, p in denoiser.unet.named_parameters() if f"lora_B.{adapter}." in n]
        assert weights, adapter
        assert all(torch.count_nonzero(w) == 0 for w in weights), adapter
        try:
            with torch.no_grad():
                for w in weights:
                    w.fill_(1e-3)
            with torch.inference_mode():
                changed = denoiser(x_t, t_r)
        finally:
            with torch.no_grad():
                for w in weights:
                    w.zero_()
        assert not torch.allclose(changed, base), adapter
    with torch.inference_mode():
        torch.testing.assert_close(denoiser(x_t, t_r), base, rtol=0, atol=0)
