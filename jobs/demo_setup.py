"""Set-up for the pipeline demo (``jobs/demo.py``): the local servers it needs (the local S3
server from ``infra/local_s3`` and a local Ray bound to 127.0.0.1, each stopped afterwards
if the demo started it) and the input shards (the bundled samples packed into WebDataset
tars, the demo bucket made and its prefix cleared). Split from ``demo.py``, which imports
these names.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_S3 = REPO / "infra" / "local_s3"
CAPTIONS = {  # the Kodak images' subjects
    "kodim03": "colourful hats hanging on a wall",
    "kodim07": "red flowers in a window box by a shuttered window",
    "kodim15": "a girl with face paint",
    "kodim23": "two parrots",
}


def _say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


# ----------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_s3(cmd: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
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
    if _local_s3("status", settings, timeout=60).returncode == 0:
        _say("local S3 already running on 127.0.0.1:7480: using it (left running)")
        started, tmp_state = False, None
        proc = _local_s3("env", settings)
    else:
        _say("starting the local S3 server (Ceph radosgw, 127.0.0.1:7480; first time ~30 s)")
        started, tmp_state = True, None
        proc = _local_s3("start", settings)
        if proc.returncode != 0:  # a stale state dir can wedge radosgw: a fresh one
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
            tmp_state = tempfile.mkdtemp(prefix="oscar-demo-s3-")
            settings = {
                "OSCAR_S3_DIR": tmp_state,
                "OSCAR_S3_PORT": str(_free_port()),
                "OSCAR_S3_OBJECTSTORE": "memstore",
            }
            _say(
                f"default state dir failed ({last[0] if last else 'no output'}); "
                f"retrying with {tmp_state} on port {settings['OSCAR_S3_PORT']}"
            )
            proc = _local_s3("start", settings)
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
            _say("stopping the local S3 server")
            _local_s3("stop", settings, timeout=180)
            if tmp_state:
                shutil.rmtree(tmp_state, ignore_errors=True)


@contextmanager
def local_ray(workers: int | None) -> Iterator[None]:
    """A local Ray bound to 127.0.0.1 (no dashboard) for the whole demo; shut down after."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before importing ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throw-away local instance
    import ray

    _say("starting a local Ray on 127.0.0.1")
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
        _say("stopping Ray")
        ray.shutdown()


# ------------------------------------------------------------------------ shards


def pack_shards(paths: list[Path], n_shards: int) -> dict[str, bytes]:
    """WebDataset tars: ``<key>.png`` (the file's bytes) + ``.json`` + ``.txt`` per sample."""
    shards: dict[str, bytes] = {}
    per = -(-len(paths) // n_shards)
    for s in range(n_shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for path in paths[s * per : (s + 1) * per]:
                meta = json.dumps({"file": path.name}).encode()
                caption = CAPTIONS.get(path.stem, path.stem).encode()
                for ext, data in (("png", path.read_bytes()), ("json", meta), ("txt", caption)):
                    info = tarfile.TarInfo(f"{path.stem}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tf.addfile(info, io.BytesIO(data))
        shards[f"shard-{s:06d}.tar"] = buf.getvalue()
    return shards


def _ensure_bucket(name: str) -> None:
    from pipeline.storage_s3 import s3_client

    client = s3_client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)


def _clear_prefix(url: str) -> None:
    from pipeline import storage

    for obj in storage.list_prefix(url):
        storage.delete(obj)
