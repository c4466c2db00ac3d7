"""Soak: encode-shards again and again on random good and bad input; every key once, always.

    python -m tests.fuzz.soak_pipeline          (make soak)
    OSCAR_SOAK_ITERATIONS=20 OSCAR_SOAK_SECONDS=3600 make soak

Starts its own S3 server (``infra/local_s3``: a temp state dir, a free port on 127.0.0.1,
memstore) and one local Ray (127.0.0.1, 2 CPUs), then per iteration: three fresh shards in
which each sample is, at random, a good image or one of the bad inputs below (and a shard
may end inside its last member); ``run_encode`` with a random rate, one or two actors and
a low pixel limit; then, read back from S3: one row per key, every key exactly once, good
images ``ok``, bad ones ``error``. Every other iteration re-runs with ``overwrite`` into the
same output and checks again (a redone shard replaces its rows). Bounded by
``OSCAR_SOAK_ITERATIONS`` (default 5) and ``OSCAR_SOAK_SECONDS`` (default 1800); exits 1 at
the first violation, with the shard and the keys.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage, storage_s3
from tests.pipeline.shards import image_bytes, png_with_size, tar_bytes, truncate_in_member

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_PIXELS = 40_000  # a 256x256 image is over it
SIZES = [(32, 48), (48, 64), (64, 64)]
BAD_KINDS = ["corrupt", "zero", "text", "random", "bomb", "over_limit", "no_image"]


@dataclass
class ShardPlan:
    name: str
    tar: bytes
    expect: dict[str, bool | None] = field(default_factory=dict)  # key -> ok?


def make_shard(rng: np.random.Generator, name: str, n: int = 12) -> ShardPlan:
    """A shard of ``n`` samples, each good or bad at random; ``expect`` is the oracle."""
    entries: list[tuple[str, bytes]] = []
    expect: dict[str, bool | None] = {}
    for i in range(n):
        key = f"{name}-{i:03d}"
        kind = "good" if rng.random() < 0.6 else BAD_KINDS[int(rng.integers(len(BAD_KINDS)))]
        h, w = SIZES[int(rng.integers(len(SIZES)))]
        seed = int(rng.integers(1 << 30))
        ok: bool | None = False
        if kind == "good":
            data, ext, ok = image_bytes(h, w, seed=seed, fmt="PNG"), "png", True
        elif kind == "corrupt":  # may or may not still decode
            buf = bytearray(image_bytes(h, w, seed=seed, fmt="JPEG"))
            at = int(rng.integers(len(buf) // 4, len(buf)))
            buf[at : at + 64] = rng.bytes(64)
            data, ext, ok = bytes(buf), "jpg", None
        elif kind == "zero":
            data, ext = b"", "png"
        elif kind == "text":
            data, ext = b"not an image at all", "jpg"
        elif kind == "random":
            data, ext = rng.bytes(int(rng.integers(1, 2048))), "png"
        elif kind == "bomb":
            data, ext = png_with_size(20000, 20000), "png"
        elif kind == "over_limit":
            data, ext = image_bytes(256, 256, seed=seed), "png"
        else:  # a caption only
            data, ext = b"a caption without an image", "txt"
        entries.append((f"{key}.{ext}", data))
        if ext != "txt":
            entries.append((f"{key}.txt", f"caption {i}".encode()))
        expect[key] = ok
    tar = tar_bytes(entries)
    if rng.random() < 0.25:  # the shard ends inside its last member: that key is an error
        last, data = entries[-1]
        if len(data) >= 2:  # cut inside the data (a cut at its end is a different fault)
            tar = truncate_in_member(tar, last, keep=len(data) // 2)
            expect[last.split(".", 1)[0]] = False
    return ShardPlan(name, tar, expect)


def check_rows(plans: list[ShardPlan], tables: dict[str, pa.Table]) -> list[str]:
    """Violations of 'every key exactly once, with the expected status' (empty: fine)."""
    problems = []
    for plan in plans:
        table = tables.get(plan.name)
        if table is None:
            problems.append(f"{plan.name}: no Parquet")
            continue
        keys, status = table["key"].to_pylist(), table["status"].to_pylist()
        if sorted(keys) != sorted(plan.expect):
            missing = sorted(set(plan.expect) - set(keys))
            extra = sorted(k for k in set(keys) if keys.count(k) > 1 or k not in plan.expect)
            problems.append(f"{plan.name}: missing {missing}, duplicated/unknown {extra}")
        for key, st in zip(keys, status, strict=True):
            want = plan.expect.get(key)
            if want is not None and (st == "ok") != want:
                problems.append(f"{plan.name}/{key}: status {st}, expected {want}")
    return problems


def _free_port_pair() -> int:
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _read_tables(out: str) -> dict[str, pa.Table]:
    urls = [u for u in storage.list_prefix(out + "/") if u.endswith(".parquet")]
    return {
        u.rsplit("/", 1)[1].removesuffix(".parquet"): pq.read_table(
            io.BytesIO(storage.read_bytes(u))
        )
        for u in urls
    }


def soak(iterations: int, seconds: float) -> int:
    from oscar_core.codec import DEFAULT_MODEL_DIR
    from pipeline.contract import EncodeJob, Resources
    from pipeline.runner import run_encode

    bucket = f"soak-{uuid.uuid4().hex[:8]}"
    storage_s3.s3_client().create_bucket(Bucket=bucket)
    t_start, failures = time.monotonic(), 0
    for it in range(iterations):
        if time.monotonic() - t_start > seconds:
            print(f"soak: time budget of {seconds:.0f} s used after {it} iterations")
            break
        t0, rng = time.monotonic(), np.random.default_rng(1000 + it)
        base = f"s3://{bucket}/it{it:03d}"
        plans = [make_shard(rng, f"shard-{s:06d}") for s in range(3)]
        for plan in plans:
            storage.put_bytes(f"{base}/in/{plan.name}.tar", plan.tar)
        rate, workers = int(rng.integers(0, 8)), int(rng.integers(1, 3))
        runs = 2 if it % 2 else 1
        for run in range(runs):
            report = run_encode(
                EncodeJob(
                    f"{base}/in/*.tar",
                    f"{base}/out",
                    str(DEFAULT_MODEL_DIR),
                    rate=str(rate),
                    max_pixels=MAX_PIXELS,
                    overwrite=run > 0,
                    max_retries=2,
                    backoff_s=0.2,
                    resources=Resources(workers=workers, gpus_per_worker=0, cpus_per_worker=1),
                    progress=False,
                )
            )
            problems = [f"{n}: failed: {e}" for n, _a, e in report["failed"]]
            problems += check_rows(plans, _read_tables(f"{base}/out"))
            n = sum(len(p.expect) for p in plans)
            errors = report["summary"]["images_error"]
            tag = "overwrite re-run" if run else f"rate {rate}, {workers} workers"
            verdict = "every key once" if not problems else f"{len(problems)} PROBLEMS"
            print(
                f"soak {it + 1}/{iterations} ({tag}): {n} samples ({errors} errors) in "
                f"{len(plans)} shards: {verdict} ({time.monotonic() - t0:.1f} s)",
                flush=True,
            )
            for p in problems:
                print(f"  {p}", flush=True)
            failures += bool(problems)
    return 1 if failures else 0


def main() -> int:
    iterations = int(os.environ.get("OSCAR_SOAK_ITERATIONS", "5"))
    seconds = float(os.environ.get("OSCAR_SOAK_SECONDS", "1800"))
    state = tempfile.mkdtemp(prefix="oscar-soak-s3-")
    script_env = {
        **os.environ,
        "OSCAR_S3_DIR": state,
        "OSCAR_S3_PORT": str(_free_port_pair()),
        "OSCAR_S3_OBJECTSTORE": "memstore",
    }
    local_s3 = os.path.join(REPO, "infra", "local_s3")

    def s3(cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [local_s3, cmd], env=script_env, capture_output=True, text=True, check=False
        )

    started = s3("start")
    try:
        if started.returncode != 0:
            print(f"soak: local S3 did not start:\n{started.stderr[-3000:]}", file=sys.stderr)
            return 1
        os.environ.update(storage.parse_env_exports(started.stdout))  # before Ray starts
        os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
        storage_s3.reset_s3_client()
        import ray

        ray.init(
            num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR"
        )
        try:
            return soak(iterations, seconds)
        finally:
            ray.shutdown()
    finally:
        s3("stop")
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
