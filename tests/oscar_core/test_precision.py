"""``Codec(precision="bf16")``: same contract as fp32 (types, shapes, valid streams), pixels
within a small tolerance of the fp32 decode, the VQ argmax kept in fp32, clear errors where
bf16 is not native. A tiny seeded model on the CPU, one torch thread. And the CUDA fp32
settings (``configure_cuda_determinism``), as far as a machine without CUDA can check them:
the flags it writes, idempotence, a no-op for the CPU (on a GPU: tests/oscar_core/test_cuda.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from oscar_core import Codec, precision
from oscar_core.images import pad_reflect, to_tensor
from oscar_core.precision import (
    configure_cuda_determinism,
    cpu_supports_bf16,
    resolve_precision,
)
from tests.conftest import cuda_backend_flags, kodak_crop, smooth_image

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no native bf16")
H, W = 61, 90  # odd on purpose: padding and cropping as in the fp32 tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def codecs(tiny_codec):
    """(fp32, bf16) codecs sharing one seeded model."""
    if not cpu_supports_bf16():
        pytest.skip("CPU has no native bf16")
    return tiny_codec, Codec(tiny_codec.model, precision="bf16")


def test_default_is_fp32(tiny_codec):
    assert tiny_codec.precision == "fp32"
    x = pad_reflect(to_tensor([smooth_image(64, 64, seed=2)]), 64, 64)  # (1,3,64,64)
    with torch.inference_mode():
        # fp32: the stage helpers are the bare model calls, bit for bit
        assert torch.equal(tiny_codec.latent_encode(x), tiny_codec.model.autoencoder.encode(x))


@needs_bf16
@pytest.mark.parametrize("rate_index", [0, 3, 7])
def test_bf16_round_trip_close_to_fp32(codecs, rate_index):
    fp32, bf16 = codecs
    image = smooth_image(H, W, seed=rate_index)
    (stream,) = fp32.compress([image], rate_index)
    (ref,) = fp32.decompress([stream])
    (out,) = bf16.decompress([stream])  # same stream, bf16 decoder
    assert out.shape == ref.shape == (H, W, 3) and out.dtype == np.uint8
    delta = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    # random weights amplify rounding (measured: mean 1.0-1.3 levels, max 10-13); the
    # trained model is far closer (test_shipped_model_bf16_within_a_fraction_of_a_level)
    assert delta.mean() < 2.5 and delta.max() <= 32, (delta.mean(), delta.max())
    # a bf16 encoder writes a valid stream of the same model: both decoders read it
    (stream16,) = bf16.compress([image], rate_index)
    assert fp32.parse(stream16).indices.shape == fp32.parse(stream).indices.shape
    for codec in (fp32, bf16):
        (img,) = codec.decompress([stream16])
        assert img.shape == (H, W, 3) and img.dtype == np.uint8


@needs_bf16
def test_shipped_model_bf16_within_a_fraction_of_a_level():
    """The trained model, a 192x128 Kodak crop: bf16 decode vs fp32 decode of one stream."""
    image = kodak_crop()  # (128,192,3)
    fp32 = Codec.from_pretrained(batch_size=1)
    bf16 = Codec(fp32.model, batch_size=1, precision="bf16")
    (stream,) = fp32.compress([image], 7)
    ref, out = fp32.decompress([stream])[0], bf16.decompress([stream])[0]
    delta = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    # measured: mean 0.15-0.21 levels, max 2-3 (rates 0, 3, 7)
    assert delta.mean() < 0.5 and delta.max() <= 8, (delta.mean(), delta.max())


@needs_bf16
def test_bf16_stages_return_float32_and_vq_runs_in_fp32(codecs):
    fp32, bf16 = codecs
    image = smooth_image(64, 64, seed=4)
    x = pad_reflect(to_tensor([image]), 64, 64)  # (1,3,64,64)
    with torch.inference_mode():
        z0 = bf16.latent_encode(x)  # (1,4,8,8)
        t_r = torch.full((1,), 300, dtype=torch.long)
        z0_hat = bf16.denoise(z0, t_r)
        x_hat = bf16.latent_decode(z0_hat)  # (1,3,64,64)
        for t in (z0, z0_hat, x_hat):
            assert t.dtype == torch.float32
        assert x_hat.shape == (1, 3, 64, 64) and x_hat.abs().max() <= 1.0
        # the indices in the stream are the fp32 argmax of the bf16 encoder's z0
        expected = bf16.model.hypers[5].encode_indices(z0)[0].numpy()
    (stream,) = bf16.compress([image], 5)
    np.testing.assert_array_equal(bf16.parse(stream).indices, expected)


@needs_bf16
def test_from_pretrained_takes_precision(tiny_codec, tmp_path):
    tiny_codec.model.save_pretrained(tmp_path / "m")
    codec = Codec.from_pretrained(tmp_path / "m", precision="bf16", batch_size=2)
    assert codec.precision == "bf16" and codec.model_id == tiny_codec.model_id


def test_bad_precision_is_a_clear_error(tiny_codec):
    with pytest.raises(ValueError, match="Invalid precision"):
        Codec(tiny_codec.model, precision="fp16")
    with pytest.raises(ValueError, match="not supported on device type"):
        resolve_precision("bf16", torch.device("meta"))


def test_bf16_without_native_support_is_refused(tiny_codec, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16"):
        Codec(tiny_codec.model, precision="bf16")
    assert Codec(tiny_codec.model, precision="fp32").precision == "fp32"


# -- fp32 on CUDA (configure_cuda_determinism): flags only, no CUDA needed ------------------

STRICT_FP32 = {
    "matmul_allow_tf32": False,
    "cudnn_allow_tf32": False,
    "float32_matmul_precision": "highest",
    "cudnn_deterministic": True,
    "cudnn_benchmark": False,
    "deterministic_algorithms": True,
    "deterministic_warn_only": True,
    "cublas_workspace_config": ":4096:8",
}


def test_cuda_determinism_is_a_no_op_off_cuda(tiny_codec, restore_cuda_backend_flags):
    before = restore_cuda_backend_flags
    assert configure_cuda_determinism("cpu") is False
    assert configure_cuda_determinism(torch.device("cpu")) is False
    Codec(tiny_codec.model)  # a CPU codec leaves the process's settings alone
    assert cuda_backend_flags() == before


def test_cuda_determinism_sets_strict_fp32_flags(restore_cuda_backend_flags):
    # the defaults it must change: cuDNN allows TF32 unless told otherwise
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    assert configure_cuda_determinism(torch.device("cuda:1")) is True
    flags = cuda_backend_flags()
    assert {k: flags[k] for k in STRICT_FP32} == STRICT_FP32
    assert set(flags["fp32_precision"]) <= {"ieee"}  # torch >= 2.9: the per-backend API too
    assert not torch.cuda.is_initialized()  # flags only: no CUDA context is created


def test_cuda_determinism_is_idempotent(restore_cuda_backend_flags):
    configure_cuda_determinism("cuda")
    once = cuda_backend_flags()
    assert configure_cuda_determinism("cuda") is True
    assert cuda_backend_flags() == once


def test_cuda_determinism_overrides_the_per_backend_tf32_api(restore_cuda_backend_flags):
    # code that opted into TF32 with torch's newer API: the legacy flags alone would not
    # turn it off (and reading them would raise, the two APIs disagreeing)
    backends = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    if not all(hasattr(b, "fp32_precision") for b in backends):
        pytest.skip("this torch has no per-backend fp32_precision")
    for backend in backends:
        backend.fp32_precision = "tf32"
    configure_cuda_determinism("cuda")
    assert [b.fp32_precision for b in backends] == ["ieee", "ieee"]
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False


def test_cuda_determinism_keeps_stricter_or_equivalent_settings(
    restore_cuda_backend_flags, monkeypatch
):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other deterministic size
    torch.use_deterministic_algorithms(True)  # errors, not warnings: stricter than ours
    configure_cuda_determinism("cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # not deterministic: replaced
    configure_cuda_determinism("cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
