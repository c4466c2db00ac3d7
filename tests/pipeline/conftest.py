"""Fixtures for pipeline tests that need a real S3 server (Ceph radosgw via infra/local_s3).

Why a real server and no mock: the storage layer relies on behaviour a mock may fake
(multipart uploads, server-side copy, listing, error codes for missing buckets and bad
credentials).  ``s3_env`` starts the server once per session (or reuses one that already
runs), exports its ``AWS_*`` settings for the session and restores the environment after.
A server this session started is stopped at the end unless ``OSCAR_S3_KEEP=1`` (useful when
several sessions share it, or to keep the ~15 s start-up out of repeated runs).  If the
server cannot start, the fixture fails with the log tail: a silent skip would hide that the
S3 code path went untested.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import storage, storage_s3

REPO = Path(__file__).resolve().parents[2]
LOCAL_S3 = REPO / "infra" / "local_s3"


# Tests get their own server: a fresh state directory per session (a state dir left by a
# killed run can wedge radosgw's start-up), a port away from the demo's 7480, and memstore
# (no 20 GiB sparse file). OSCAR_S3_DIR / OSCAR_S3_PORT set by the user win.
_TEST_S3_ENV = {
    "OSCAR_S3_DIR": os.environ.get("OSCAR_S3_DIR")
    or tempfile.mkdtemp(prefix="oscar-test-s3-", dir=os.environ.get("TMPDIR", "/tmp")),
    "OSCAR_S3_PORT": os.environ.get("OSCAR_S3_PORT", "7580"),
    "OSCAR_S3_OBJECTSTORE": os.environ.get("OSCAR_S3_OBJECTSTORE", "memstore"),
}


def _run(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOCAL_S3), cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **_TEST_S3_ENV},
    )


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """The local S3 server's environment (endpoint, dev credentials), set in os.environ."""
    was_running = _run("status", timeout=30).returncode == 0
    try:
        proc = _run("start", timeout=600)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"infra/local_s3 start timed out:\n{e.stderr or ''}", pytrace=False)
    if proc.returncode != 0:
        # The script's own ERROR line first (it ends stderr), then the daemons' log tail.
        errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
        pytest.fail(
            f"infra/local_s3 start failed (rc={proc.returncode}): "
            f"{errors[-1] if errors else ''}\n--- output tail ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    env = storage.parse_env_exports(proc.stdout)
    if "AWS_ENDPOINT_URL" not in env:
        pytest.fail(f"infra/local_s3 start printed no env lines:\n{proc.stdout}", pytrace=False)

    mp = pytest.MonkeyPatch()  # session scope cannot use the function-scoped monkeypatch
    for key, value in env.items():
        mp.setenv(key, value)
    storage_s3.reset_s3_client()  # a client built earlier would point at another endpoint
    try:
        yield env
    finally:
        mp.undo()
        storage_s3.reset_s3_client()
        if not was_running and os.environ.get("OSCAR_S3_KEEP") != "1":
            _run("stop", timeout=120)


def empty_and_delete_bucket(bucket: str) -> None:
    client = storage_s3.s3_client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    # Abandoned multipart uploads would make DeleteBucket fail with BucketNotEmpty.
    for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> Iterator[str]:
    """A fresh, empty bucket for one test; emptied and deleted afterwards."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    storage_s3.s3_client().create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        storage_s3.reset_s3_client()  # a test may have swapped credentials
        empty_and_delete_bucket(bucket)


# ----------------------------------------------------------------- shard pipeline fixtures


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
