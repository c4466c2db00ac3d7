"""encode-shards on a two-node Ray cluster (both nodes on this machine, 127.0.0.1 only).

The head is ``ray start --head --node-ip-address 127.0.0.1 ...``. The second node cannot be
a second ``ray start --address ...`` here: with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the
setting that keeps Ray on 127.0.0.1) ``ray start`` refuses to join a cluster, and without
it Ray rewrites ``127.0.0.1`` in both ``--address`` and ``--node-ip-address`` to the
machine's external address. So the second node is started the way Ray's own
``ray.cluster_utils.Cluster`` adds nodes: ``ray._private.node.Node(head=False)`` in a helper
process (``NODE_SCRIPT``), with the same setting, which binds everything to 127.0.0.1.

The driver is a subprocess (``python -m jobs.cli encode-shards --address ...``), so it never
meets the session's in-process Ray (``ray_cluster``). Teardown ends only the processes this
test started: the two process groups it created and their descendants (Ray's own workers
make their own groups), never ``ray stop``, which kills every Ray process on the machine
by name, other sessions' included.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from jobs.common.paths import REPO
from jobs.common.ports import free_port
from tests.pipeline.shards import image_bytes, tar_bytes

N_SHARDS, PER_SHARD = 4, 3
RAY = str(Path(sys.executable).with_name("ray"))

# argv: GCS address, temp dir. Prints "READY <json list of alive node ids>" once the GCS
# lists two alive nodes, then waits for SIGTERM (Node's shutdown hook ends its processes).
NODE_SCRIPT = r"""
import json, os, signal, sys, time
from ray._private.node import Node
from ray._private.parameter import RayParams

params = RayParams(
    gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0,
    object_store_memory=100 << 20, min_worker_port=0, max_worker_port=0, node_manager_port=0,
    include_log_monitor=False, temp_dir=sys.argv[2],
)
params.dashboard_agent_listen_port = None  # a free port: the head's agent has its own
node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=False)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
gcs = node.get_gcs_client()
deadline = time.monotonic() + 60
while True:
    infos = gcs.get_all_node_info(timeout=5).values()
    alive = [i.node_id.hex() for i in infos if i.state == 0]  # GcsNodeInfo.ALIVE
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("READY", json.dumps(alive), flush=True)
while True:
    time.sleep(3600)
"""


def _ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray server on 127.0.0.1
    env["RAY_AUTH_MODE"] = "disabled"
    env["PYTHONPATH"] = str(REPO)
    return env


def _our_processes(group_leaders: list[int]) -> list[psutil.Process]:
    """Every process in the given process groups, plus all their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in group_leaders:
                found[proc.pid] = proc
        except (ProcessLookupError, psutil.Error):
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(found.values())


def _stop(group_leaders: list[int]) -> list[str]:
    """SIGTERM our processes, SIGKILL what is left after 5 s; returns the survivors."""
    procs = _our_processes(group_leaders)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    return [f"{p.pid}" for p in still]


def _listening(group_leaders: list[int]) -> set[str]:
    """host of every TCP socket our processes listen on."""
    hosts = set()
    for proc in _our_processes(group_leaders):
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        hosts |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return hosts


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """The next stdout line of ``proc``, or "" after ``timeout`` seconds or at EOF."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return proc.stdout.readline() if sel.select(timeout) else ""


@dataclass
class TwoNodes:
    address: str
    node_ids: list[str]
    groups: list[int]


@pytest.fixture
def two_nodes() -> Iterator[TwoNodes]:
    # Ray's unix socket paths must stay short (< 108 bytes): a short dir in /tmp.
    temp_dir = tempfile.mkdtemp(prefix="oscar-mn-", dir="/tmp")
    port, env, groups = free_port(), _ray_env(), []
    node = None
    try:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
            + ["--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "false"]
            + ["--temp-dir", temp_dir, "--disable-usage-stats"]
            + ["--object-store-memory", str(100 << 20)]
            + ["--dashboard-agent-listen-port", str(free_port())]
            + ["--ray-client-server-port", str(free_port())],
            env=env,
            start_new_session=True,  # its daemons keep this process group after it exits
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        groups.append(head.pid)
        out, _ = head.communicate(timeout=90)
        assert head.returncode == 0, f"ray start --head failed:\n{out[-3000:]}"
        address = f"127.0.0.1:{port}"
        node = subprocess.Popen(
            [sys.executable, "-c", NODE_SCRIPT, address, temp_dir],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        groups.append(node.pid)
        line = _readline(node, timeout=120)  # READY [...] (the helper gives up after 60 s)
        assert line.startswith("READY"), f"second node failed: {line}{node.stderr.read()[-3000:]}"
        node_ids = json.loads(line.split(" ", 1)[1])
        assert len(node_ids) == 2, f"the GCS lists {node_ids}"
        yield TwoNodes(address, node_ids, groups)
    finally:
        survivors = _stop(groups)
        if node is not None:
            node.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes left running: {survivors}"


def _shards(directory: Path) -> None:
    for s in range(N_SHARDS):
        entries = []
        for i in range(PER_SHARD):
            key = f"s{s}-{i}"
            entries += [(f"{key}.png", image_bytes(48, 64, seed=10 * s + i))]
            entries += [(f"{key}.txt", f"caption {s} {i}".encode())]
        (directory / f"shard-{s:06d}.tar").write_bytes(tar_bytes(entries))


def test_encode_shards_uses_both_nodes(two_nodes, tiny_model_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _shards(src)
    # Every Ray server of both nodes listens on 127.0.0.1 only.
    assert _listening(two_nodes.groups) <= {"127.0.0.1", "::ffff:127.0.0.1"}

    cmd = [sys.executable, "-m", "jobs.cli", "encode-shards", f"{src}/shard-{{000000..000003}}.tar"]
    cmd += ["--out", str(out), "--rate", "1", "--model", tiny_model_dir, "--workers", "2"]
    cmd += ["--gpus-per-worker", "0", "--cpus-per-worker", "1", "--batch-size", "4"]
    cmd += ["--address", two_nodes.address, "--no-progress"]
    proc = subprocess.run(
        cmd, cwd=REPO, env=_ray_env(), capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "job_report.json").read_text())
    assert report["shards"]["processed"] == N_SHARDS and report["shards"]["failed"] == 0
    assert report["summary"]["images"] == N_SHARDS * PER_SHARD
    assert report["summary"]["images_error"] == 0
    # two actors, one on each node (1 CPU per node, 1 CPU per actor)
    worker_nodes = [w["node_id"] for w in report["workers"]]
    assert sorted(worker_nodes) == sorted(two_nodes.node_ids)
    # each shard's stats name the node that coded it; both nodes coded shards
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*.stats.json"))]
    assert len(stats) == N_SHARDS
    assert {s["worker"]["node_id"] for s in stats} == set(two_nodes.node_ids)
    assert report["summary"]["nodes"] == 2
    # the output is complete: every key once, every row ok
    rows = pq.ParquetDataset(sorted(str(p) for p in out.glob("*.parquet"))).read().to_pylist()
    keys = sorted(r["key"] for r in rows)
    assert keys == sorted(f"s{s}-{i}" for s in range(N_SHARDS) for i in range(PER_SHARD))
    assert {r["status"] for r in rows} == {"ok"}
