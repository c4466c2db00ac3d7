"""The servers of the pipeline demo (``end_to_end.py``): the local S3 server from
``infra/local_s3`` and a local Ray bound to 127.0.0.1, each stopped afterwards if the demo
started it, and the demo's bucket (made if missing, its prefix cleared).

Why not ``pipeline.dispatch.ray_session``: the demo starts Ray once for its three jobs with
``num_cpus = --workers`` and without forwarding worker logs, and says what it is doing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.common.paths import LOCAL_S3
from jobs.common.ports import free_port_pair


def say(msg: str) -> None:
    """One progress line of the demo, ``demo: <msg>``."""
    print(f"demo: {msg}", flush=True)


# ----------------------------------------------------------------------- servers


def local_s3_command(
    cmd: str, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``infra/local_s3 CMD`` (start, status, env, stop) with ``env`` over ours."""
    return subprocess.run(
        [str(LOCAL_S3), cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )


@contextmanager
def local_s3() -> Iterator[dict[str, str]]:
    """The local S3 server's AWS_* settings, exported into os.environ; the server is
    stopped at the end if this call started it."""
    settings: dict[str, str] = {}  # default state dir .local_s3, port 7480
    if local_s3_command("status", settings, timeout=60).returncode == 0:
        say("local S3 already running on 127.0.0.1:7480: using it (left running)")
        started, tmp_state = False, None
        proc = local_s3_command("env", settings)
    else:
        say("starting the local S3 server (Ceph radosgw, 127.0.0.1:7480; first time ~30 s)")
        started, tmp_state = True, None
        proc = local_s3_command("start", settings)
        if proc.returncode != 0:  # a stale state dir can wedge radosgw: a fresh one
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
            tmp_state = tempfile.mkdtemp(prefix="oscar-demo-s3-")
            settings = {
                "OSCAR_S3_DIR": tmp_state,
                "OSCAR_S3_PORT": str(free_port_pair()),
                "OSCAR_S3_OBJECTSTORE": "memstore",
            }
            say(
                f"default state dir failed ({last[0] if last else 'no output'}); "
                f"retrying with {tmp_state} on port {settings['OSCAR_S3_PORT']}"
            )
            proc = local_s3_command("start", settings)
            if proc.returncode != 0:
                shutil.rmtree(tmp_state, ignore_errors=True)
                raise RuntimeError(f"infra/local_s3 start failed:\n{proc.stderr[-3000:]}")
    from pipeline import storage, storage_s3

    env = storage.parse_env_exports(proc.stdout)
    if "AWS_ENDPOINT_URL" not in env:
        raise RuntimeError(f"infra/local_s3 printed no settings:\n{proc.stdout}{proc.stderr}")
    os.environ.update(env)  # before Ray starts: its workers inherit the environment
    storage_s3.reset_s3_client()
    try:
        yield env
    finally:
        if started:
            say("stopping the local S3 server")
            local_s3_command("stop", settings, timeout=180)
            if tmp_state:
                shutil.rmtree(tmp_state, ignore_errors=True)


@contextmanager
def local_ray(workers: int | None) -> Iterator[None]:
    """A local Ray bound to 127.0.0.1 (no dashboard) for the whole demo; shut down after."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before importing ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throw-away local instance
    import ray

    say("starting a local Ray on 127.0.0.1")
    ray.init(
        num_cpus=workers,  # None: every core (one 1-thread actor per CPU, at most per shard)
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        say("stopping Ray")
        ray.shutdown()


def ensure_bucket(name: str) -> None:
    """Make the bucket ``name`` unless it exists."""
    from pipeline.storage_s3 import s3_client

    client = s3_client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)


def clear_prefix(url: str) -> None:
    """Delete every object under ``url`` (a previous run's inputs and outputs)."""
    from pipeline import storage

    for obj in storage.list_prefix(url):
        storage.delete(obj)
