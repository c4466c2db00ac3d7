"""Soak: encode-shards and decode-shards again and again on random good and bad input.

    python -m tests.fuzz.soak_pipeline          (make soak, after the property test)
    OSCAR_SOAK_ITERATIONS=20 OSCAR_SOAK_SECONDS=3600 make soak

Starts its own S3 server (``infra/local_s3``: a temp state dir, a free port on 127.0.0.1,
memstore) and one local Ray (127.0.0.1, 2 CPUs), then per iteration: three fresh shards, each
a random mix of good samples and every bad kind the project knows, with a random shard-level
fault (``tests/pipeline/mixed_shards.py``); ``run_encode`` with a random rate, one or two
actors and a low pixel limit; ``run_decode`` in a random ``--format``; then, read back from
S3, the oracle's ``check`` on every shard: every sample exactly once (a row; then in the
decoded output with every carried field byte for byte, or in the ``.errors`` listing), no
shard failed. Every other iteration re-runs the encode with ``overwrite`` into the same
output and checks again (a redone shard replaces its rows). Bounded by
``OSCAR_SOAK_ITERATIONS`` (default 5) and ``OSCAR_SOAK_SECONDS`` (default 1800); exits 1 at
the end if any check failed, printing the shard and the violations.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

from jobs.common.ports import free_port_pair
from pipeline import parquet, storage, storage_s3
from pipeline.report import read_notes
from tests.pipeline import mixed_shards as mixed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS, MAX_SAMPLES = 3, 16


def check_outputs(builds: dict, out: str, dec: str, fmt: str) -> list[str]:
    """The oracle on every shard of one encode + decode: the violations, by shard."""
    problems = []
    columns = ["index_in_shard", "key", "key_bytes", "status"]
    for name, build in builds.items():
        try:
            rows = parquet.read_table(f"{out}/{name}.parquet", columns=columns).to_pylist()
            output = mixed.read_tar(storage.read_bytes(f"{dec}/{name}.tar"))
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: output missing: {exc}")
            continue
        notes = [vars(n) for n in read_notes(f"{dec}/{name}.errors")]
        problems += [f"{name}: {p}" for p in mixed.check(build.records, rows, output, notes, fmt)]
    return problems


def soak(iterations: int, seconds: float) -> int:
    from oscar_core.codec import DEFAULT_MODEL_DIR
    from pipeline.contract import DecodeJob, EncodeJob, Resources
    from pipeline.runner import run_decode, run_encode

    bucket = f"soak-{uuid.uuid4().hex[:8]}"
    storage_s3.s3_client().create_bucket(Bucket=bucket)
    t_start, failures = time.monotonic(), 0
    for it in range(iterations):
        if time.monotonic() - t_start > seconds:
            print(f"soak: time budget of {seconds:.0f} s used after {it} iterations")
            break
        t0, rng = time.monotonic(), np.random.default_rng(1000 + it)
        base = f"s3://{bucket}/it{it:03d}"
        builds = {}
        for s in range(SHARDS):
            kinds = [
                str(k) for k in rng.choice(mixed.KINDS, size=int(rng.integers(1, MAX_SAMPLES)))
            ]
            fault = mixed.FAULTS[int(rng.integers(len(mixed.FAULTS)))]
            builds[f"shard-{s:06d}"] = mixed.build_shard(kinds, int(rng.integers(1 << 30)), fault)
        for name, build in builds.items():
            storage.put_bytes(f"{base}/in/{name}.tar", build.tar)
        rate, workers = int(rng.integers(0, 8)), int(rng.integers(1, 3))
        fmt = mixed.FORMATS[int(rng.integers(len(mixed.FORMATS)))]
        res = Resources(workers=workers, gpus_per_worker=0, cpus_per_worker=1)
        common = {
            "max_pixels": mixed.MAX_PIXELS,
            "max_retries": 2,
            "backoff_s": 0.2,
            "progress": False,
        }
        for run in range(2 if it % 2 else 1):
            out, dec = f"{base}/out", f"{base}/dec{run}"
            job = EncodeJob(
                f"{base}/in/*.tar",
                out,
                str(DEFAULT_MODEL_DIR),
                rate=str(rate),
                overwrite=run > 0,
                resources=res,
                **common,
            )
            report = run_encode(job)
            decoded = run_decode(
                DecodeJob(
                    [f"{out}/*.parquet"],
                    dec,
                    str(DEFAULT_MODEL_DIR),
                    format=fmt,
                    resources=res,
                    **common,
                )
            )
            problems = [f"{n}: encode failed: {e}" for n, _a, e in report.failed]
            problems += [f"{n}: decode failed: {e}" for n, _a, e in decoded.failed]
            problems += check_outputs(builds, out, dec, fmt)
            n = sum(len(b.records) for b in builds.values())
            errors, notes = report.summary.images_error, decoded.summary
            tag = "overwrite re-run" if run else f"rate {rate}, {workers} workers, --format {fmt}"
            verdict = "nothing lost" if not problems else f"{len(problems)} PROBLEMS"
            print(
                f"soak {it + 1}/{iterations} ({tag}): {n} samples ({errors} errors; decode "
                f"{notes.failures} failed, {notes.fallbacks} fallbacks, {notes.renamed} "
                f"renamed) in {len(builds)} shards: {verdict} ({time.monotonic() - t0:.1f} s)",
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
        "OSCAR_S3_PORT": str(free_port_pair()),
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
