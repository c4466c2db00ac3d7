"""Shared test fixtures: tiny seeded models, synthetic images; slow tests behind OSCAR_SLOW=1,
CUDA tests (marker ``cuda``) skipped where ``torch.cuda.is_available()`` is False."""

from __future__ import annotations

import os

import numpy as np
import pytest

# The local S3 server's fixtures (s3_env, s3_bucket) for every directory: one server a run.
pytest_plugins = ["tests.s3_server"]


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_items:
        import torch

        if not torch.cuda.is_available():
            skip_cuda = pytest.mark.skip(reason="needs a CUDA device (make gpu-check)")
            for item in cuda_items:
                item.add_marker(skip_cuda)
    if os.environ.get("OSCAR_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set OSCAR_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is fastest, and on a busy 2-core machine far faster.
    Use per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_codec():
    """A random-init, seeded ``oscar-tiny`` codec (the same weights in every run)."""
    from oscar_core import Codec

    return Codec.from_config("oscar-tiny", seed=0)


def smooth_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A deterministic photo-like test image: smooth gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for _ in range(channels):
        fx, fy, ph = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.28)]
        plane = (
            127 + 80 * np.sin(fx * xx + ph) * np.cos(fy * yy) + rng.normal(0, 8, (height, width))
        )
        planes.append(plane)
    img = np.stack(planes, axis=-1).clip(0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


def kodak_crop() -> np.ndarray:
    """A (128,192,3) crop of a Kodak image shipped in jobs/samples (a real photo)."""
    from PIL import Image

    from oscar_core import DEFAULT_MODEL_DIR
    from oscar_core.images import to_rgb_array

    sample = sorted((DEFAULT_MODEL_DIR.parents[2] / "jobs" / "samples").glob("*.png"))[1]
    with Image.open(sample) as img:
        return to_rgb_array(img)[100:228, 200:392]


def _fp32_precision_backends() -> list:
    import torch

    cudnn = torch.backends.cudnn
    backends = [torch.backends.cuda.matmul, cudnn, getattr(cudnn, "conv", None)]
    backends.append(getattr(cudnn, "rnn", None))
    return [b for b in backends if b is not None and hasattr(b, "fp32_precision")]


def cuda_backend_flags() -> dict:
    """The process-wide settings ``configure_cuda_determinism`` writes (reading them needs no
    CUDA device)."""
    import torch

    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "fp32_precision": [b.fp32_precision for b in _fp32_precision_backends()],
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


@pytest.fixture
def restore_cuda_backend_flags(monkeypatch):
    """Put back the settings of ``cuda_backend_flags`` after the test (they are global);
    CUBLAS_WORKSPACE_CONFIG is unset during the test. Yields the settings before it."""
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # monkeypatch restores it
    before = cuda_backend_flags()
    yield before
    # legacy flags first, then the per-backend ones: torch refuses to read a mix that disagrees
    torch.backends.cuda.matmul.allow_tf32 = before["matmul_allow_tf32"]
    torch.backends.cudnn.allow_tf32 = before["cudnn_allow_tf32"]
    torch.set_float32_matmul_precision(before["float32_matmul_precision"])
    for backend, value in zip(_fp32_precision_backends(), before["fp32_precision"], strict=True):
        backend.fp32_precision = value
    torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
    torch.use_deterministic_algorithms(
        before["deterministic_algorithms"], warn_only=before["deterministic_warn_only"]
    )
    assert {**cuda_backend_flags(), "cublas_workspace_config": None} == before
