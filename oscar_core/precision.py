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

fp32 on CUDA means fp32 (``configure_cuda_determinism``, called by ``Codec`` on a CUDA
device at fp32, and by training on CUDA): TF32 off for matmuls and cuDNN convolutions
(TF32 rounds their inputs to 10 mantissa bits, a relative error up to ~5e-4 against ~6e-8
in fp32: enough to flip the VQ argmax at a near-tie), cuDNN deterministic and not benchmarking (the benchmark may
pick another algorithm, hence another summation order, per process), and torch's
deterministic algorithms where it has them (``warn_only``: an op without one warns, never
fails). The settings are process-wide, like every torch backend flag. What this makes
bit-exact, and what no setting can: docs/gpu.md.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"
# cuBLAS is deterministic only with a fixed workspace per stream (":4096:8" or ":16:8");
# it reads the variable when it creates its first handle, i.e. at the first CUDA matmul.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_DETERMINISTIC_CUBLAS_WORKSPACES = (":4096:8", ":16:8")


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


def configure_cuda_determinism(device: str | torch.device) -> bool:
    """Make fp32 on CUDA exact fp32 and as deterministic as torch allows; no-op off CUDA.

    Sets, process-wide: TF32 off (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``, float32 matmul precision "highest"), cuDNN
    deterministic without benchmarking, ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` (a stricter setting already made is kept), and
    ``CUBLAS_WORKSPACE_CONFIG`` unless it already names a deterministic workspace (it acts
    only if set before the process's first cuBLAS call). Idempotent; does not initialise
    CUDA. Returns True when it configured (``device`` is a CUDA device), False otherwise
    (a CPU ``device`` changes nothing: the CPU paths keep their own, faster, defaults).
    """
    if torch.device(device).type != "cuda":
        return False
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in _DETERMINISTIC_CUBLAS_WORKSPACES:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    # torch >= 2.9 also has per-backend settings; a "tf32" left there by other code would
    # win over the flags above (and torch refuses to read a legacy flag that disagrees with
    # them), so name "ieee" explicitly: both APIs then read "no TF32".
    for backend in (
        torch.backends.cuda.matmul,
        torch.backends.cudnn,
        getattr(torch.backends.cudnn, "conv", None),
        getattr(torch.backends.cudnn, "rnn", None),
    ):
        if backend is not None and hasattr(backend, "fp32_precision"):
            backend.fp32_precision = "ieee"
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    strict = (
        torch.are_deterministic_algorithms_enabled()
        and not torch.is_deterministic_algorithms_warn_only_enabled()
    )
    if not strict:  # keep a caller's use_deterministic_algorithms(True) (errors, not warnings)
        torch.use_deterministic_algorithms(True, warn_only=True)
    return True
