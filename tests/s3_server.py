"""The real local S3 server for every test that needs one (Ceph radosgw via infra/local_s3),
registered for the whole suite by ``pytest_plugins`` in tests/conftest.py.

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

import pytest

from jobs.common.ports import free_port_pair
from jobs.demo.servers import local_s3_command
from pipeline import storage, storage_s3

# Tests get their own server: a fresh state directory per session (a state dir left by a
# killed run can wedge radosgw's start-up), a free port pair (radosgw, monitor) away from the
# demo's 7480 so that test sessions running side by side never reach each other's monitor,
# and memstore (no 20 GiB sparse file). OSCAR_S3_DIR / OSCAR_S3_PORT set by the user win.
_TEST_S3_ENV = {
    "OSCAR_S3_DIR": os.environ.get("OSCAR_S3_DIR")
    or tempfile.mkdtemp(prefix="oscar-test-s3-", dir=os.environ.get("TMPDIR", "/tmp")),
    "OSCAR_S3_PORT": os.environ.get("OSCAR_S3_PORT") or str(free_port_pair()),
    "OSCAR_S3_OBJECTSTORE": os.environ.get("OSCAR_S3_OBJECTSTORE", "memstore"),
}


def _run(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return local_s3_command(cmd, _TEST_S3_ENV, timeout)


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
