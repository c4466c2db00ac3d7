"""Faults of the object store, and credential hygiene, on a real S3 server of their own.

The module starts a second Ceph radosgw (``infra/local_s3`` with its own state dir and a
free port on 127.0.0.1, memstore) whose dev secret is a random canary string, so that
stopping its gateway never disturbs the session's server and a leaked secret is
unmistakable. One scenario feeds both tests:

1. ``oscar encode-shards`` runs as a subprocess (its own local Ray, ``RAY_TMPDIR`` in a
   temp dir so that every Ray log of the job can be searched afterwards);
2. as soon as the first shard is done the S3 gateway is stopped (``local_s3
   stop-gateway``), so the next shard fails on open, read or upload; ``oscar status`` during
   the outage must fail with one clear line;
3. the gateway comes back after a few seconds; the job's retries with backoff finish every
   shard (exit 0), and ``oscar status`` (text and ``--json``) reports all done.

Checked: every stats JSON (the done marker, written last) has a complete Parquet with every
key exactly once; at least one shard needed a retry; and the canary secret appears in no
object of the bucket, no captured stdout/stderr, no Ray log and no file the job wrote.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from jobs.cli.main import main as cli_main
from jobs.common.paths import LOCAL_S3, REPO
from jobs.common.ports import free_port_pair
from pipeline import storage, storage_s3
from tests.pipeline.shards import image_bytes, tar_bytes

CANARY = f"oscar-canary-{uuid.uuid4().hex}"  # the secret key that must never be written
N_SHARDS, PER_SHARD = 3, 16
OUTAGE_S = 6.0  # the gateway stays down this long (the job's backoff: 1, 2, 4, 8, 16 s)


@dataclass
class FaultS3:
    script_env: dict[str, str]  # OSCAR_S3_* settings for infra/local_s3
    aws: dict[str, str]  # the AWS_* lines it printed

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LOCAL_S3), command],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, **self.script_env},
        )

    def client(self):  # noqa: ANN201 - a boto3 client for this server only
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.aws["AWS_ENDPOINT_URL"],
            aws_access_key_id=self.aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.aws["AWS_SECRET_ACCESS_KEY"],
            region_name=self.aws["AWS_DEFAULT_REGION"],
            config=Config(retries={"max_attempts": 2}, connect_timeout=5),
        )


@pytest.fixture(scope="module")
def fault_s3() -> Iterator[FaultS3]:
    state = tempfile.mkdtemp(prefix="oscar-fault-s3-", dir=os.environ.get("TMPDIR", "/tmp"))
    script_env = {
        "OSCAR_S3_DIR": state,
        "OSCAR_S3_PORT": str(free_port_pair()),
        "OSCAR_S3_OBJECTSTORE": "memstore",
        "OSCAR_S3_ACCESS_KEY": "oscar-fault",
        "OSCAR_S3_SECRET_KEY": CANARY,
    }
    server = FaultS3(script_env, {})
    proc = server.run("start")
    try:
        if proc.returncode != 0:
            pytest.fail(f"fault S3 server did not start:\n{proc.stderr[-4000:]}", pytrace=False)
        server.aws = storage.parse_env_exports(proc.stdout)
        yield server
    finally:
        server.run("stop")
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class OutageRun:
    bucket: str
    keys: dict[str, list[str]]  # shard name -> keys
    encode_rc: int
    outage_status: subprocess.CompletedProcess[str]
    after: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    logs: Path = Path()  # captured stdout/stderr of the encode job
    ray_tmp: Path = Path()  # RAY_TMPDIR of the job: every Ray log
    objects: dict[str, bytes] = field(default_factory=dict)  # bucket contents at the end


def _job_env(server: FaultS3, ray_tmp: Path) -> dict[str, str]:
    """The environment of a user's shell after ``eval "$(infra/local_s3 start)"``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    return {
        **env,
        **server.aws,
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_AUTH_MODE": "disabled",  # as in conftest: no token file for a throw-away Ray
        "OMP_NUM_THREADS": "1",
        "OSCAR_S3_MAX_ATTEMPTS": "2",  # fail fast during the outage: the shard retry waits
    }


def _cli(server: FaultS3, *argv: str) -> subprocess.CompletedProcess[str]:
    """``oscar <argv>`` in this process (as test_jobs does), against ``server``'s env."""
    mp = pytest.MonkeyPatch()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        mp.delenv(key)
    for key, value in {**server.aws, "OSCAR_S3_MAX_ATTEMPTS": "2"}.items():
        mp.setenv(key, value)
    storage_s3.reset_s3_client()
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli_main(list(argv))
    finally:
        mp.undo()
        storage_s3.reset_s3_client()
    return subprocess.CompletedProcess(list(argv), rc, out.getvalue(), err.getvalue())


def _all_objects(client, bucket: str) -> dict[str, bytes]:  # noqa: ANN001
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.fixture(scope="module")
def outage(fault_s3: FaultS3, tiny_model_dir: str) -> Iterator[OutageRun]:
    client, bucket = fault_s3.client(), f"fault-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    keys = {}
    for s in range(N_SHARDS):
        names = [f"s{s}-{i:03d}" for i in range(PER_SHARD)]
        entries = []
        for i, k in enumerate(names):
            entries += [(f"{k}.png", image_bytes(64, 96, seed=100 * s + i))]
            entries += [(f"{k}.txt", f"caption {k}".encode())]
        client.put_object(Bucket=bucket, Key=f"in/shard-{s:06d}.tar", Body=tar_bytes(entries))
        keys[f"shard-{s:06d}"] = names
    work = Path(tempfile.mkdtemp(prefix="oscf-", dir="/tmp"))  # short: Ray's socket paths
    env = _job_env(fault_s3, work / "ray")
    out = f"s3://{bucket}/out"
    cmd = [sys.executable, "-m", "jobs.cli", "encode-shards", f"s3://{bucket}/in/*.tar"]
    cmd += ["--out", out, "--rate", "1", "--model", tiny_model_dir, "--workers", "1"]
    cmd += ["--gpus-per-worker", "0", "--cpus-per-worker", "1", "--batch-size", "4"]
    cmd += ["--max-retries", "5", "--no-progress", "-v"]
    logs = work / "encode.log"
    try:
        with open(logs, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 150
                while True:  # wait for the first done marker
                    listing = client.list_objects_v2(Bucket=bucket, Prefix="out/")
                    if any(o["Key"].endswith(".stats.json") for o in listing.get("Contents", [])):
                        break
                    assert proc.poll() is None, logs.read_text()[-3000:]
                    assert time.monotonic() < deadline, "no shard finished in 150 s"
                    time.sleep(0.1)
                stop = fault_s3.run("stop-gateway")
                assert stop.returncode == 0, stop.stderr
                t_down = time.monotonic()
                outage_status = _cli(fault_s3, "status", out)  # fails: nothing answers
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
                start = fault_s3.run("start")
                assert start.returncode == 0, start.stderr[-3000:]
                rc = proc.wait(timeout=240)
            finally:
                proc.kill()
                proc.wait()
        run = OutageRun(bucket, keys, rc, outage_status, logs=logs, ray_tmp=work / "ray")
        run.after = [_cli(fault_s3, "status", out), _cli(fault_s3, "status", out, "--json")]
        run.objects = _all_objects(client, bucket)
        yield run
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_s3_outage_mid_job_retries_and_completes(outage: OutageRun):
    log = outage.logs.read_text()
    assert outage.encode_rc == 0, log[-4000:]
    # While the gateway was down: one clear line, exit 2, no traceback.
    err = outage.outage_status.stderr.strip().splitlines()
    assert outage.outage_status.returncode == 2 and len(err) == 1, outage.outage_status.stderr
    assert err[0].startswith("oscar: error: status: s3://") and "onnect" in err[0]
    # The outage hit a shard in flight: it failed, was retried with backoff, and finished.
    report = json.loads(outage.objects["out/job_report.json"])
    assert report["shards"] == {
        "total": N_SHARDS,
        "done_before": 0,
        "processed": N_SHARDS,
        "failed": 0,
        "not_run": 0,
    }
    assert max(s["attempt"] for s in report["per_shard"]) >= 2, log[-4000:]
    assert "attempt 1 failed" in log
    # Done markers and Parquets: every stats JSON has a complete Parquet; every key once.
    for name, keys in outage.keys.items():
        stats = json.loads(outage.objects[f"out/{name}.stats.json"])
        table = pq.read_table(io.BytesIO(outage.objects[f"out/{name}.parquet"]))
        assert table.num_rows == stats["samples"] == len(keys)
        assert sorted(table["key"].to_pylist()) == sorted(keys)
        assert set(table["status"].to_pylist()) == {"ok"}
    assert not [k for k in outage.objects if k.endswith(".failed.json")]
    # Status after the restart: everything done.
    text, as_json = outage.after
    assert text.returncode == 0 and f"{N_SHARDS} done, 0 failed, 0 pending" in text.stdout
    assert len(json.loads(as_json.stdout)["done"]) == N_SHARDS


def _files_under(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def test_credentials_never_leak(outage: OutageRun):
    secret = CANARY.encode()
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "").encode() != secret  # a distinct secret
    leaks = [f"s3 object {k}" for k, data in outage.objects.items() if secret in data]
    # Every captured output of every command: the job, status during and after the outage.
    outputs = {"encode-shards": outage.logs.read_bytes()}
    for i, proc in enumerate([outage.outage_status, *outage.after]):
        outputs[f"status #{i} stdout"] = proc.stdout.encode()
        outputs[f"status #{i} stderr"] = proc.stderr.encode()
    leaks += [name for name, data in outputs.items() if secret in data]
    # Every file of the job's Ray session: driver, raylet, GCS and worker logs.
    ray_files = list(_files_under(outage.ray_tmp))
    assert any(p.name.startswith("worker-") for p in ray_files), "no Ray worker logs found"
    leaks += [str(p) for p in ray_files if secret in p.read_bytes()]
    assert leaks == [], f"the secret key appears in: {leaks}"
    # The resolved job config and the report exist and were searched.
    assert {"out/job_config.json", "out/job_report.json", "out/job_report.md"} <= set(
        outage.objects
    )
