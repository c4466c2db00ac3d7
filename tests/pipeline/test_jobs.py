"""End to end against the real local S3 (Ceph radosgw) and a real local Ray (127.0.0.1).

The module builds three input shards in a fresh bucket: a good one (several sizes, a
grayscale PNG, carried fields), one with a corrupt image, a non-image payload and a sample
without an image, and one whose last tar member is truncated. One encode run feeds most
tests: default resources on the session's cluster, which has 2 fake GPUs, so it also checks
that each actor is pinned to its own GPU; per-shard rates come from a rates file. The
resume, failure and kill tests run CPU-only jobs into their own prefixes.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from jobs.common.paths import REPO
from pipeline import storage, storage_s3
from pipeline.contract import DecodeJob, EncodeJob, Resources
from pipeline.dispatch import run_tasks
from pipeline.outputs import collect_status
from pipeline.report import EncodeReport
from pipeline.runner import run_decode, run_encode
from tests.pipeline.shards import image_bytes, tar_bytes, truncate_in_member
from tests.s3_server import empty_and_delete_bucket

# One CPU actor: each actor imports torch (seconds of CPU), so tests start as few as they can.
CPU = Resources(workers=1, gpus_per_worker=0, cpus_per_worker=1)


@dataclass
class Dataset:
    bucket: str
    shards: list[str]  # s3 URLs
    keys: dict[str, list[str]]  # shard URL -> every sample key, in order
    errors: dict[str, set[str]]  # shard URL -> keys expected to be error rows
    sizes: dict[str, tuple[int, int]]  # key -> (width, height) of the good samples

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _shard0() -> tuple[list, dict]:
    entries, sizes = [], {}
    for i, (h, w) in enumerate([(64, 96), (64, 96), (64, 96), (128, 160), (128, 160)]):
        key = f"s0-{i:03d}"
        entries += [(f"{key}.jpg", image_bytes(h, w, seed=i, fmt="JPEG"))]
        entries += [(f"{key}.txt", f"caption {i}".encode()), (f"{key}.json", b'{"i": %d}' % i)]
        sizes[key] = (w, h)
    entries += [("s0-gray.png", image_bytes(96, 128, seed=9, mode="L"))]
    sizes["s0-gray"] = (128, 96)
    return entries, sizes


def _shard1() -> tuple[list, dict]:
    corrupt = bytearray(image_bytes(96, 128, seed=3))
    corrupt[150:400] = b"\x00" * 250
    entries = [
        ("s1-good.png", image_bytes(112, 80, seed=1)),
        ("s1-corrupt.png", bytes(corrupt)),
        ("s1-fake.jpg", b"this is a text file, not a JPEG"),
        ("s1-readme.txt", b"a sample without an image"),
        ("s1-good2.webp", image_bytes(64, 64, seed=2, fmt="WEBP")),
    ]
    return entries, {"s1-good": (80, 112), "s1-good2": (64, 64)}


def _shard2() -> tuple[bytes, dict]:
    entries = [(f"s2-{i}.png", image_bytes(64, 96, seed=20 + i)) for i in range(4)]
    return truncate_in_member(tar_bytes(entries), "s2-3.png"), {
        f"s2-{i}": (96, 64) for i in range(3)
    }


@pytest.fixture(scope="module")
def dataset(s3_env: dict[str, str]) -> Iterator[Dataset]:
    bucket = f"test-jobs-{uuid.uuid4().hex[:10]}"
    storage_s3.s3_client().create_bucket(Bucket=bucket)
    e0, sizes0 = _shard0()
    e1, sizes1 = _shard1()
    tar2, sizes2 = _shard2()
    blobs = {"shard-000000.tar": tar_bytes(e0), "shard-000001.tar": tar_bytes(e1)}
    blobs["shard-000002.tar"] = tar2
    for name, blob in blobs.items():
        storage.put_bytes(f"s3://{bucket}/in/{name}", blob)
    shards = [f"s3://{bucket}/in/{n}" for n in sorted(blobs)]
    keys = {
        shards[0]: [f"s0-{i:03d}" for i in range(5)] + ["s0-gray"],
        shards[1]: ["s1-good", "s1-corrupt", "s1-fake", "s1-readme", "s1-good2"],
        shards[2]: ["s2-0", "s2-1", "s2-2", "s2-3"],
    }
    errors = {
        shards[0]: set(),
        shards[1]: {"s1-corrupt", "s1-fake", "s1-readme"},
        shards[2]: {"s2-3"},
    }
    # Rates: shard 0 by exact name at index 2; the others by glob at a bpp target (-> 3).
    storage.put_bytes(
        f"s3://{bucket}/rates.json",
        json.dumps({"shard-000000.tar": 2, "shard-00000[12].tar": 0.05}).encode(),
    )
    try:
        yield Dataset(bucket, shards, keys, errors, {**sizes0, **sizes1, **sizes2})
    finally:
        storage_s3.reset_s3_client()
        empty_and_delete_bucket(bucket)


def encode_job(ds: Dataset, out: str, model: str, **kw) -> EncodeJob:
    base = {
        "src": ds.url("in/shard-{000000..000002}.tar"),
        "out": ds.url(out),
        "model_dir": model,
        "rates_file": ds.url("rates.json"),
        "resources": CPU,
        "max_retries": 1,
        "backoff_s": 0.05,
        "progress": False,
    }
    return EncodeJob(**{**base, **kw})


@pytest.fixture(scope="module")
def encoded(dataset, ray_cluster, tiny_model_dir) -> EncodeReport:
    # Default resources: one actor per (fake) GPU.
    return run_encode(encode_job(dataset, "enc", tiny_model_dir, resources=Resources()))


def parquet_urls(ds: Dataset, prefix: str) -> list[str]:
    return [u for u in storage.list_prefix(ds.url(prefix + "/")) if u.endswith(".parquet")]


def download(urls: list[str], to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for u in urls:
        (to / u.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(u))
    return to


def duckdb_rows(ds: Dataset, prefix: str, tmp: Path) -> list[tuple]:
    local = download(parquet_urls(ds, prefix), tmp / prefix)
    sql = f"SELECT shard, key, status, rate_index FROM read_parquet('{local}/*.parquet')"
    return duckdb.sql(sql + " ORDER BY shard, index_in_shard").fetchall()


def assert_every_key_once(ds: Dataset, rows: list[tuple]) -> None:
    seen = [(shard, key) for shard, key, *_ in rows]
    assert len(seen) == len(set(seen)), "duplicate rows"
    assert sorted(seen) == sorted((s, k) for s, keys in ds.keys.items() for k in keys)


# ----------------------------------------------------------------------------- encode


def test_every_key_once_with_duckdb(encoded, dataset, tmp_path):
    rows = duckdb_rows(dataset, "enc", tmp_path)
    assert_every_key_once(dataset, rows)
    errors = {(s, k) for s, k, status, _ in rows if status == "error"}
    assert errors == {(s, k) for s, keys in dataset.errors.items() for k in keys}


def test_every_key_once_with_pyarrow_on_s3(encoded, dataset, s3_env):
    # Read in place from the object store, as an analytics user would.
    fs = pafs.S3FileSystem(
        endpoint_override=s3_env["AWS_ENDPOINT_URL"],
        access_key=s3_env["AWS_ACCESS_KEY_ID"],
        secret_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region=s3_env["AWS_DEFAULT_REGION"],
    )
    paths = [u.removeprefix("s3://") for u in parquet_urls(dataset, "enc")]
    table = pq.ParquetDataset(paths, filesystem=fs).read()
    rows = [(r["shard"], r["key"]) for r in table.select(["shard", "key"]).to_pylist()]
    assert_every_key_once(dataset, rows)
    ok = table.filter(pc.equal(table["status"], "ok")).to_pylist()
    for r in ok:
        assert (r["width"], r["height"]) == dataset.sizes[r["key"]]
        assert r["bitstream_bytes"] == len(r["bitstream"]) > 29
    # two different per-shard rates from the rates file, recorded on every ok row
    by_shard = {(r["shard"].rsplit("/", 1)[1], r["rate_index"]) for r in ok}
    assert by_shard == {("shard-000000.tar", 2), ("shard-000001.tar", 3), ("shard-000002.tar", 3)}


def test_report_config_and_stats(encoded, dataset):
    n_keys = sum(len(k) for k in dataset.keys.values())
    n_err = sum(len(e) for e in dataset.errors.values())
    s = encoded.summary
    assert asdict(encoded.shards) == {
        "total": 3,
        "done_before": 0,
        "processed": 3,
        "failed": 0,
        "not_run": 0,
    }
    assert (s.images, s.images_error) == (n_keys, n_err)
    assert s.ratio > 1 and s.images_per_s > 0
    names = {u.rsplit("/", 1)[1] for u in storage.list_prefix(dataset.url("enc/"))}
    assert {"job_config.json", "job_report.json", "job_report.md"} <= names
    assert {f"shard-00000{i}.stats.json" for i in range(3)} <= names
    config = json.loads(storage.read_bytes(dataset.url("enc/job_config.json")))
    assert [s["rate_index"] for s in config["shards"]] == [2, 3, 3]
    # nothing written at the output holds a credential
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for name in ("job_config.json", "job_report.json", "shard-000000.stats.json"):
        assert secret not in storage.read_bytes(dataset.url(f"enc/{name}")).decode()
    md = storage.read_bytes(dataset.url("enc/job_report.md")).decode()
    assert "| shard-000001 | 3 | 5 | 3 |" in md


def test_each_gpu_actor_gets_its_own_gpu(encoded):
    workers = encoded.workers
    pinned = sorted((tuple(w["gpu_ids"]), w["cuda_visible_devices"]) for w in workers)
    assert pinned == [(("0",), "0"), (("1",), "1")]
    assert {w["device"] for w in workers} == {"cpu"}  # fake GPUs (OSCAR_FAKE_GPUS=1): the CPU
    devices = {r.worker.split()[-1] for r in encoded.per_shard}
    assert devices == {"cpu"}


def test_second_run_skips_all_shards(encoded, dataset, tiny_model_dir):
    def stamps() -> dict[str, object]:
        client = storage_s3.s3_client()
        listing = client.list_objects_v2(Bucket=dataset.bucket, Prefix="enc/")["Contents"]
        return {o["Key"]: o["LastModified"] for o in listing if o["Key"].endswith(".parquet")}

    before = stamps()
    report = run_encode(encode_job(dataset, "enc", tiny_model_dir))
    assert report.shards.done_before == 3 and report.shards.processed == 0
    assert report.workers == []  # no actor was even started
    assert stamps() == before


def test_decode_as_shards_and_as_files(encoded, dataset, tiny_model_dir, tmp_path):
    parquets = [dataset.url("enc/shard-*.parquet")]
    report = run_decode(
        DecodeJob(parquets, dataset.url("dec"), tiny_model_dir, resources=CPU, progress=False)
    )
    n_ok = len(dataset.sizes)
    assert report.summary.images_decoded == n_ok and report.summary.failures == 0
    local = download(
        [u for u in storage.list_prefix(dataset.url("dec/")) if u.endswith(".tar")], tmp_path
    )
    seen = {}
    for tar in sorted(local.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                data = tf.extractfile(m).read()
                key, ext = m.name.split(".", 1)
                if ext == "png":
                    seen[key] = Image.open(io.BytesIO(data)).size
                if key == "s0-001" and ext == "txt":
                    assert data == b"caption 1"  # carried fields restored as fields
    assert seen == dataset.sizes

    files_out = tmp_path / "files"
    run_decode(
        DecodeJob(
            parquets,
            str(files_out),
            tiny_model_dir,
            format="jpg",
            as_files=True,
            resources=CPU,
            progress=False,
        )
    )
    sizes = {p.stem: Image.open(p).size for p in files_out.rglob("*.jpg")}
    assert sizes == dataset.sizes
    assert (files_out / "shard-000000" / "s0-002.json").read_bytes() == b'{"i": 2}'
    img = np.asarray(Image.open(files_out / "shard-000000" / "s0-000.jpg"))
    assert img.shape == (64, 96, 3) and img.std() > 1  # a real image, not a blank


# ----------------------------------------------------------------------------- resume


def test_resume_after_a_limited_run(dataset, ray_cluster, tiny_model_dir, tmp_path, capsys):
    first = run_encode(encode_job(dataset, "resume", tiny_model_dir, limit=1))
    assert first.shards.processed == 1 and first.shards.not_run == 2
    status = collect_status(dataset.url("resume"))
    assert (len(status.done), len(status.pending), status.failed) == (1, 2, {})
    assert cli_main(["status", dataset.url("resume")]) == 0
    assert "1 done, 0 failed, 2 pending (of 3 shards)" in capsys.readouterr().out

    second = run_encode(encode_job(dataset, "resume", tiny_model_dir))
    assert second.shards.done_before == 1 and second.shards.processed == 2
    assert_every_key_once(dataset, duckdb_rows(dataset, "resume", tmp_path / "a"))

    # --overwrite forgets every done marker first, so a redo cut short leaves shards pending
    third = run_encode(encode_job(dataset, "resume", tiny_model_dir, overwrite=True, limit=1))
    assert third.shards.done_before == 0 and third.shards.processed == 1
    assert len(collect_status(dataset.url("resume")).pending) == 2
    assert_every_key_once(dataset, duckdb_rows(dataset, "resume", tmp_path / "b"))


def test_killed_driver_then_rerun(dataset, ray_cluster, tiny_model_dir, tmp_path):
    """SIGKILL the driver (a subprocess on the session's Ray) after its first shard is done;
    a re-run finishes the rest and no shard's rows are duplicated."""
    big = tar_bytes([(f"k{i:03d}.png", image_bytes(64, 96, seed=i)) for i in range(48)])
    names = [f"kill-{i}.tar" for i in range(6)]
    for name in names:
        storage.put_bytes(dataset.url(f"kill-in/{name}"), big)
    out = dataset.url("kill-out")
    cmd = [sys.executable, "-m", "jobs.cli", "encode-shards", dataset.url("kill-in/*.tar")]
    cmd += ["--out", out, "--rate", "1", "--model", tiny_model_dir, "--workers", "1"]
    cmd += ["--gpus-per-worker", "0", "--cpus-per-worker", "1", "--batch-size", "4"]
    cmd += ["--address", ray_cluster, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not any(u.endswith(".stats.json") for u in storage.list_prefix(out + "/")):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard finished in 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done_at_kill = sum(u.endswith(".stats.json") for u in storage.list_prefix(out + "/"))
    assert 1 <= done_at_kill < 6

    report = run_encode(
        EncodeJob(
            dataset.url("kill-in/*.tar"),
            out,
            tiny_model_dir,
            rate="1",
            resources=Resources(workers=1, gpus_per_worker=0, cpus_per_worker=1),
            progress=False,
        )
    )
    assert report.shards.done_before == done_at_kill
    assert report.shards.processed == 6 - done_at_kill
    local = download(parquet_urls(dataset, "kill-out"), tmp_path / "kill")
    counts = duckdb.sql(
        f"SELECT shard, count(*), count(DISTINCT key) FROM read_parquet('{local}/*.parquet') "
        "GROUP BY shard"
    ).fetchall()
    assert sorted(c[1:] for c in counts) == [(48, 48)] * 6


# ----------------------------------------------------------------------------- failures


def test_missing_shard_is_retried_then_reported(dataset, ray_cluster, tiny_model_dir, capsys):
    listing = dataset.url("lists/with-missing.txt")
    storage.put_bytes(listing, f"{dataset.shards[0]}\n{dataset.url('in/gone.tar')}\n".encode())
    job = encode_job(dataset, "fail", tiny_model_dir, src=listing, rate="1", rates_file=None)
    report = run_encode(job)
    assert report.shards.processed == 1 and report.shards.failed == 1
    ((name, attempts, error),) = report.failed
    assert (name, attempts) == ("gone", 2) and "no such object" in error
    status = collect_status(dataset.url("fail"))
    assert list(status.failed) == ["gone"] and "no such object" in status.failed["gone"]
    # the shard appears; a re-run does only it and clears the failure marker
    storage.put_bytes(dataset.url("in/gone.tar"), storage.read_bytes(dataset.shards[2]))
    assert run_encode(job).shards.processed == 1
    status = collect_status(dataset.url("fail"))
    assert (len(status.done), status.failed) == (2, {})


def test_dispatch_retries_with_backoff_and_replaces_dead_actors(ray_cluster, tmp_path):
    import ray
    from tqdm import tqdm

    @dataclass(frozen=True)
    class Task:  # local: shipped by value, so the actors need not import torch
        name: str
        marker: str
        attempt: int = 1

    def task(name: str) -> Task:
        return Task(name, str(tmp_path / f"{name}.marker"))

    class Flaky:  # defined here so Ray ships it by value
        def describe(self) -> dict:
            return {"pid": os.getpid()}

        def work(self, task: Task) -> tuple[str, int, int]:
            marker = Path(task.marker)
            if task.name == "die" and not marker.exists():
                marker.write_text("died once")
                os._exit(1)  # the actor process dies mid-task
            if task.name == "flaky" and task.attempt < 3:
                raise RuntimeError(f"transient failure {task.attempt}")
            if task.name == "hopeless":
                raise ValueError("always broken")
            return task.name, task.attempt, os.getpid()

    actor_cls = ray.remote(num_cpus=0)(Flaky)
    t0 = time.monotonic()
    results, failures, workers = run_tasks(
        [task(n) for n in ("ok", "die", "flaky", "hopeless")],
        method="work",
        make_actor=lambda: actor_cls.remote(),
        n_actors=2,
        max_retries=2,
        backoff_s=0.2,
        bar=tqdm(disable=True),
    )
    attempts = {name: attempt for name, attempt, _ in results}
    assert attempts == {"ok": 1, "die": 2, "flaky": 3}
    assert time.monotonic() - t0 >= 0.2 + 0.4  # flaky waited 0.2 s, then 0.4 s
    ((failed, error),) = failures
    assert (failed.name, failed.attempt) == ("hopeless", 3) and "ValueError: always broken" in error
    replaced = [w for w in workers if "replaced_after" in w]  # one actor was replaced
    assert (
        len(workers) == 3 and len(replaced) == 1 and "worker died" in replaced[0]["replaced_after"]
    )
    assert replaced[0]["pid"] not in {w["pid"] for w in workers[:2]}


def test_worker_given_a_gpu_without_cuda_stops_the_job(ray_cluster, tiny_model_dir):
    """A GPU slot without CUDA: the actor's __init__ raises, the job stops at once with that
    reason (no shard runs, no retry loop). The session's actors may run fake GPUs on the
    CPU (OSCAR_FAKE_GPUS=1); this one is told not to."""
    import ray
    from tqdm import tqdm

    from pipeline.contract import WorkerConfig
    from pipeline.dispatch import WorkersFailedToStart
    from pipeline.worker import ShardWorker

    class StrictWorker(ShardWorker):  # local: Ray ships it by value
        def __init__(self, config: WorkerConfig) -> None:
            os.environ.pop("OSCAR_FAKE_GPUS", None)
            super().__init__(config)

    actor_cls = ray.remote(num_cpus=0, num_gpus=1)(StrictWorker)
    started: list[int] = []

    def make_actor():
        started.append(1)
        return actor_cls.remote(WorkerConfig(tiny_model_dir))

    t0 = time.monotonic()
    with pytest.raises(WorkersFailedToStart) as info:
        run_tasks(
            ["never run"],
            method="encode_shard",
            make_actor=make_actor,
            n_actors=2,
            max_retries=3,
            backoff_s=0.1,
            bar=tqdm(disable=True),
        )
    message = str(info.value)
    assert "\n" not in message and message.startswith("workers failed to start: RuntimeError: ")
    assert "Ray assigned GPU" in message and "CUDA_VISIBLE_DEVICES=" in message
    assert "torch.cuda.is_available() is False" in message
    assert len(started) == 2 and time.monotonic() - t0 < 120  # no actor replaced, no retry


# ----------------------------------------------------------------------------- CLI


# A line Ray forwards from a worker process, e.g. "\x1b[36m(StrictWorker pid=8939)\x1b[0m ...":
# an earlier test's actor logs may reach the driver's stderr late, inside this test's capture.
RAY_LOG = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rate", "42"], 'Invalid rate index "42"'),
        (["--rates-file", "/nonexistent/rates.json"], "cannot read"),
        (["--rate", "1", "--model", "/nonexistent/model"], "missing config.json"),
        (["--rate", "1", "--workers", "0"], 'Invalid workers "0"'),
        (["--rate", "1", "--out", "s3://no-such-bucket-oscar-test/x"], "bucket does not exist"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(dataset, tiny_model_dir, capsys, extra, message):
    argv = ["encode-shards", dataset.url("in/*.tar"), "--out", dataset.url("cli")]
    argv += ["--model", tiny_model_dir, "--no-progress", *extra]
    assert cli_main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not RAY_LOG.match(line)]
    assert len(err) == 1 and err[0].startswith("oscar: error: encode-shards: ")
    assert message in err[0]
