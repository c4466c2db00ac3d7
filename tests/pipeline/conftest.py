"""Fixtures for the pipeline tests: ``root`` (a local and an S3 base URL), a seeded tiny
model directory and one local Ray.

The S3 server fixtures (``s3_env``, ``s3_bucket``) come from tests/s3_server.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# ----------------------------------------------------------------- shard pipeline fixtures


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable base URL without trailing slash: a tmp dir, or ``s3://<fresh bucket>``
    (both storage backends held to one contract)."""
    if request.param == "local":
        return str(tmp_path / "store")
    return "s3://" + request.getfixturevalue("s3_bucket")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init, seeded ``oscar-tiny`` model saved as a model directory."""
    from oscar_core import Codec

    path = tmp_path_factory.mktemp("model") / "oscar-tiny"
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def ray_cluster(s3_env: dict[str, str]) -> Iterator[str]:
    """One local Ray for the whole session: 127.0.0.1, 2 CPUs and 2 *fake* GPUs.

    Depends on ``s3_env`` on purpose: Ray's worker processes inherit the environment of the
    process that starts Ray, so the S3 endpoint and dev credentials must be set first. The
    fake GPUs let one instance serve both the CPU tests (``gpus_per_worker=0``) and the GPU
    pinning test; ``OSCAR_FAKE_GPUS=1``, inherited by every actor, lets an actor given a fake
    GPU run on the CPU (without it, no CUDA is a start failure: ``pick_device``). Yields the
    GCS address, for drivers started as subprocesses.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to 127.0.0.1 (before import)
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.setenv("OSCAR_FAKE_GPUS", "1")
    import ray

    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        mp.undo()
