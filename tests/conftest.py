"""Shared test fixtures: tiny seeded models, synthetic images; slow tests behind OSCAR_SLOW=1."""

from __future__ import annotations

import os

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
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
