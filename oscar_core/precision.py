"""Compute precision of the codec's heavy stages: ``"fp32"`` (default) or ``"bf16"``.

    precision="bf16": latent encode, denoiser and latent decode run under
    ``torch.autocast(device_type, dtype=torch.bfloat16)``; their outputs are cast back to
    float32 before anything else reads them.

What stays float32 whatever the precision, and why:

- the hyper-encoder + argmax VQ (``HyperEncoder.encode_indices``): under bf16 its cosine
  argmax picks another code for up to 24% of positions at rate 0 (measured on Kodak with
  the shipped model), so the bitstream would depend on the precision far more than needed;
- the hyper decode, norm matching, channel RMS (cheap: ~15 ms of ~1.6 s per 768x512 image);
- entropy coding (integer range coding, no floats).

A bf16 *encoder* still changes the bitstream a little: z0 moves by ~0.6% (relative mean
abs), which flips 0.9-2.3% of the VQ indices (by rate) and may move the header's RMS codes. The
stream stays a valid stream of the same model (an fp32 decoder reads it, and vice versa);
it is simply not byte-identical to the fp32 encoder's. fp32 keeps the determinism guarantees of
``oscar_core.codec``; bf16 is opt-in.

Where bf16 is allowed: CUDA devices that report bf16 support, and CPUs with native bf16
instructions (x86 AVX512-BF16 or AMX; aarch64 where oneDNN has bf16 kernels). Elsewhere
autocast would emulate bf16 and run *slower* than fp32, so ``resolve_precision`` raises a
``ValueError`` saying so (an explicit opt-in should not silently do something else).

channels_last memory format is not applied: on the AMD EPYC (AVX512-BF16) this was
measured on, it changed the latent encode/denoiser/latent decode times by < 3% in fp32 and
bf16 alike (min of 5 interleaved runs, 1 thread, 768x512), i.e. within noise.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 math (so autocast to bf16 is a speed-up)."""
    try:
        if platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}:
            # private torch helpers (torch/cpu/__init__.py), present since torch 2.1
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older/other build without these probes
        return False


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Validate ``precision`` for ``device``; returns it ("fp32" for None).

    Raises ``ValueError`` for an unknown name, or for bf16 where the device has no native
    bf16 (CPU without AVX512-BF16/AMX, CUDA without bf16, any other device type).
    """
    precision = DEFAULT_PRECISION if precision is None else str(precision).lower()
    if precision not in PRECISIONS:
        raise ValueError(f'Invalid precision "{precision}", should be one of {PRECISIONS}')
    if precision == "fp32":
        return precision
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("precision bf16: this CUDA device does not support bfloat16")
    elif device.type == "cpu":
        if not cpu_supports_bf16():
            raise ValueError(
                "precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); "
                "emulated bf16 would be slower than fp32: use precision fp32"
            )
    else:
        raise ValueError(f"precision bf16: not supported on device type {device.type!r}")
    return precision


@contextlib.contextmanager
def compute_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Context for the heavy stages: bf16 autocast on ``device``, or nothing for fp32.

    Autocast runs convolutions, matmuls and linear layers in bf16 and keeps the ops it lists
    as precision-sensitive (e.g. softmax, norms on CUDA) in fp32; outputs of the wrapped
    code may be bf16, so the callers cast them back with ``.float()``.
    """
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
