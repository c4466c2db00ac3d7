"""The codec on a CUDA device: what docs/gpu.md states, checked on the GPU at hand.

Marker ``cuda``: skipped where ``torch.cuda.is_available()`` is False; ``make gpu-check``
runs these (and prints the measured pixel differences with ``-s``). Models: the tiny
seeded ``oscar-tiny`` (random weights amplify rounding) and the shipped trained one.
Creating a fp32 CUDA codec sets the process's CUDA flags (precision.py); they stay set for
the rest of the session, as they would in a worker.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oscar_core import Codec
from oscar_core.precision import CUBLAS_WORKSPACE_CONFIG
from tests.conftest import cuda_backend_flags, kodak_crop, smooth_image

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
H, W = 61, 90  # odd on purpose: padding and cropping as in the CPU tests
RATES = (0, 3, 7)


def level_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.fixture(scope="module")
def codecs() -> tuple[Codec, Codec]:
    """(cpu, cuda) fp32 codecs of the same seeded oscar-tiny weights (two model copies)."""
    cpu = Codec.from_config("oscar-tiny", seed=0, batch_size=1)
    gpu = Codec.from_config("oscar-tiny", seed=0, batch_size=1, device=DEVICE)
    assert gpu.model_id == cpu.model_id  # the same weights, hashed on the CPU
    return cpu, gpu


@pytest.fixture(scope="module")
def shipped() -> tuple[Codec, Codec]:
    """(cpu, cuda) fp32 codecs of the trained model shipped with the package."""
    return Codec.from_pretrained(batch_size=1), Codec.from_pretrained(batch_size=1, device=DEVICE)


def check_cpu_vs_cuda(cpu: Codec, gpu: Codec, image: np.ndarray, rate_index: int) -> None:
    """Both encoders write valid streams of the model; each decoder reads both; the two
    decodes of one stream are within one level."""
    (s_cpu,) = cpu.compress([image], rate_index)
    (s_gpu,) = gpu.compress([image], rate_index)
    p_cpu, p_gpu = cpu.parse(s_cpu), cpu.parse(s_gpu)
    assert p_gpu.header.height == image.shape[0] and p_gpu.header.width == image.shape[1]
    same = float((p_cpu.indices == p_gpu.indices).mean())
    # the argmax of floats: near-ties may flip (docs/gpu.md); most indices agree
    assert same >= 0.99, f"rate {rate_index}: only {same:.2%} of the indices agree"
    for name, stream in (("cpu", s_cpu), ("cuda", s_gpu)):
        (on_cpu,) = cpu.decompress([stream])
        (on_gpu,) = gpu.decompress([stream])
        assert on_gpu.shape == on_cpu.shape == image.shape and on_gpu.dtype == np.uint8
        d = level_diff(on_gpu, on_cpu)
        print(
            f"rate {rate_index}, {name}-encoded stream, cuda vs cpu decode: max {d.max()} "
            f"levels, mean {d.mean():.4f}, {np.count_nonzero(d)} of {d.size} values differ; "
            f"indices agree {same:.2%}, streams {'equal' if s_cpu == s_gpu else 'differ'}"
        )
        assert d.max() <= 1, f"rate {rate_index}: cuda and cpu decodes differ by {d.max()}"


@pytest.mark.parametrize("rate_index", RATES)
def test_cuda_and_cpu_read_each_others_streams_within_one_level(codecs, rate_index):
    cpu, gpu = codecs
    check_cpu_vs_cuda(cpu, gpu, smooth_image(H, W, seed=rate_index), rate_index)


@pytest.mark.parametrize("rate_index", RATES)
def test_shipped_model_cuda_and_cpu_within_one_level(shipped, rate_index):
    cpu, gpu = shipped
    check_cpu_vs_cuda(cpu, gpu, kodak_crop(), rate_index)


def test_cuda_is_deterministic_in_one_process(codecs):
    _, gpu = codecs
    images = [smooth_image(H, W, seed=10 + i) for i in range(2)]
    streams = gpu.compress(images, 5)
    assert gpu.compress(images, 5) == streams  # same bytes again
    first = gpu.decompress(streams)
    for again in (gpu.decompress(streams), gpu.decompress(streams)):
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    # another codec instance on the same device and weights: the same pixels too
    other = Codec.from_config("oscar-tiny", seed=0, batch_size=1, device=DEVICE)
    for a, b in zip(first, other.decompress(streams), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cuda_codec_turns_tf32_off(codecs, restore_cuda_backend_flags):
    _, gpu = codecs
    torch.backends.cuda.matmul.allow_tf32 = True  # as code that wants speed may set them
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    Codec(gpu.model, device=DEVICE)  # fp32 on CUDA: strict fp32 again
    flags = cuda_backend_flags()
    assert flags["matmul_allow_tf32"] is False and flags["cudnn_allow_tf32"] is False
    assert flags["float32_matmul_precision"] == "highest"
    assert flags["cudnn_deterministic"] is True and flags["cudnn_benchmark"] is False
    assert flags["deterministic_algorithms"] is True
    assert flags["cublas_workspace_config"] == CUBLAS_WORKSPACE_CONFIG


def test_cuda_bf16_runs_close_to_fp32(codecs):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bf16")
    cpu, gpu = codecs
    bf16 = Codec(gpu.model, device=DEVICE, batch_size=1, precision="bf16")
    image = smooth_image(H, W, seed=3)
    (stream,) = gpu.compress([image], 3)
    (ref,) = gpu.decompress([stream])
    (out,) = bf16.decompress([stream])
    assert out.shape == ref.shape == (H, W, 3) and out.dtype == np.uint8
    d = level_diff(out, ref)
    print(f"cuda bf16 vs fp32 decode: max {d.max()} levels, mean {d.mean():.3f}")
    # the CPU's bound for random weights (test_precision.py): bf16 is never bit-exact
    assert d.mean() < 2.5 and d.max() <= 32, (d.mean(), d.max())
    (stream16,) = bf16.compress([image], 3)  # a valid stream: the fp32 CPU codec reads it
    (img,) = cpu.decompress([stream16])
    assert img.shape == (H, W, 3)
