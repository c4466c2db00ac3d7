"""The Ray side of a job: connect, size the actor pool, hand out tasks, retry, replace.

One contract for every shard job: an actor class with ``describe()`` and a method taking a
task (a frozen dataclass with ``name`` and ``attempt``) and returning a result. ``run_tasks``
keeps every actor busy, retries a failed task after ``backoff_s * 2**(attempt-1)`` seconds at
most ``max_retries`` times, and replaces an actor whose process died (``RayActorError``:
OOM kill, segfault, lost node) before retrying its task. Why our own loop and not
``ray.util.ActorPool``: the pool cannot tell a dead actor from a failed task, nor replace
the actor, nor delay a retry.

Ray is imported lazily, after the package has set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
(``pipeline/__init__.py``), so that a local instance binds every server to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from .contract import Resources, WorkerConfig
from .worker import ShardWorker

log = logging.getLogger(__name__)


# A ShardWorker holds one Codec on one device, cuda:0 of the GPUs Ray gives it: a second GPU
# would sit idle while Ray counts it as taken. A fraction packs several actors on one GPU.
MAX_GPUS_PER_WORKER = 1


class WorkersFailedToStart(RuntimeError):
    """No shard ran: an actor's ``__init__`` raised (the model does not load, a GPU slot
    without CUDA, ...). The message is one line ending with the actor's exception."""


def check_resources(res: Resources) -> None:
    """ValueError, before any work, for resources no job can use."""
    if res.workers is not None and res.workers < 1:
        raise ValueError(f'Invalid workers "{res.workers}"')
    gpw = res.gpus_per_worker
    if gpw is not None and not 0 <= gpw <= MAX_GPUS_PER_WORKER:  # NaN fails too
        if gpw > MAX_GPUS_PER_WORKER:
            raise ValueError(
                f"--gpus-per-worker {gpw:g}: a worker runs one codec on one GPU, so it cannot "
                f"use more than {MAX_GPUS_PER_WORKER}; use 1 (one worker per GPU, the default) "
                "or a fraction such as 0.5 (two workers share a GPU)"
            )
        raise ValueError(f'Invalid gpus_per_worker "{gpw}", should be between 0 and 1')


def connect_ray(address: str | None) -> bool:
    """Connect to ``address`` / RAY_ADDRESS, else start a local instance on 127.0.0.1.

    Returns True when this call initialised Ray (the caller shuts it down); an already
    initialised Ray (a notebook, the test session) is used as is.
    """
    import ray  # after pipeline/__init__.py: every local Ray server binds 127.0.0.1

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING
        )
    return True


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """``connect_ray(address)`` for the ``with`` block; shuts Ray down after it only when
    this call started it (a job that runs several passes keeps one Ray for all)."""
    started = connect_ray(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def plan_actors(res: Resources, n_tasks: int) -> tuple[int, dict[str, float], int]:
    """(number of actors, Ray options per actor, torch threads) for the cluster we are on."""
    import ray

    check_resources(res)

    cluster = ray.cluster_resources()
    cpus, gpus = int(cluster.get("CPU", 1)), cluster.get("GPU", 0)
    gpw = res.gpus_per_worker if res.gpus_per_worker is not None else (1 if gpus else 0)
    if gpw > 0:
        n = res.workers or max(1, math.floor(gpus / gpw))
        cpw = res.cpus_per_worker or 1
    else:
        # One CPU (one torch thread) per actor by default: processes scale as well as
        # intra-op threads here, and a 1-thread actor does not collapse when other work
        # shares the machine (2 OpenMP threads on a busy 2-core box ran 10x slower than 1).
        n = res.workers or max(1, cpus // (res.cpus_per_worker or 1))
        cpw = res.cpus_per_worker or max(1, cpus // n)
    n = max(1, min(n, n_tasks))  # no idle actors
    if n * gpw > gpus + 1e-9 or n * cpw > cpus:
        raise ValueError(
            f"{n} workers x ({cpw} CPU, {gpw} GPU) do not fit the cluster's {cpus} CPUs and "
            f"{gpus:g} GPUs: lower --workers or --gpus-per-worker"
        )
    return n, {"num_cpus": cpw, "num_gpus": gpw}, cpw


def actor_error(exc: Exception) -> str:
    """One line for a dead actor: when its ``__init__`` raised, that exception (the last
    line of Ray's message, after the traceback), else the first line of Ray's message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if getattr(exc, "_actor_init_failed", False) else lines[0]


def _task_error(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)  # RayTaskError carries the worker's exception
    return (
        f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(exc).__name__}: {exc}"
    )


def run_tasks(
    tasks: list[Any],
    *,
    method: str,
    make_actor: Callable[[], Any],
    n_actors: int,
    max_retries: int,
    backoff_s: float,
    bar: tqdm,
    on_result: Callable[[Any], None] = lambda r: None,
) -> tuple[list[Any], list[tuple[Any, str]], list[dict[str, Any]]]:
    """Run ``actor.<method>(task)`` for every task over ``n_actors`` actors.

    A failed task is retried after ``backoff_s * 2**(attempt-1)`` s, at most ``max_retries``
    times; an actor that died (``RayActorError``) is replaced and its task retried the same
    way. Returns (results, [(task, last error)], the actors' ``describe()``).
    """
    import ray
    from ray.exceptions import RayActorError

    actors = [make_actor() for _ in range(n_actors)]
    idle, pending = list(range(n_actors)), deque(tasks)
    delayed: list[tuple[float, int, Any]] = []  # (ready at, tie-break, task), a heap
    inflight: dict[Any, tuple[int, Any]] = {}
    results, failures, seq = [], [], itertools.count()
    replacements: list[tuple[Any, str]] = []  # (describe() ref of a new actor, why)
    try:
        try:  # fail fast, with the reason, when no worker can start (Ray does not retry)
            workers = ray.get([a.describe.remote() for a in actors])
        except RayActorError as exc:
            log.info("a worker failed to start: %s", exc)  # with the actor's traceback (-v)
            raise WorkersFailedToStart(f"workers failed to start: {actor_error(exc)}") from None
        while pending or delayed or inflight:
            while delayed and delayed[0][0] <= time.monotonic():
                pending.append(heapq.heappop(delayed)[2])
            while idle and pending:
                slot, task = idle.pop(), pending.popleft()
                inflight[getattr(actors[slot], method).remote(task)] = (slot, task)
            wait = max(0.0, delayed[0][0] - time.monotonic()) if delayed else None
            if not inflight:
                time.sleep(wait or 0.05)
                continue
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=wait)
            for ref in done:
                slot, task = inflight.pop(ref)
                idle.append(slot)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:  # the process died: OOM kill, segfault, node lost
                    error = f"worker died: {actor_error(exc)}"
                    ray.kill(actors[slot], no_restart=True)
                    actors[slot] = make_actor()
                    replacements.append((actors[slot].describe.remote(), error))
                except Exception as exc:  # noqa: BLE001 - the shard boundary: record, retry
                    error = _task_error(exc)
                else:
                    results.append(result)
                    on_result(result)
                    bar.update(1)
                    continue
                log.warning("%s attempt %d failed: %s", task.name, task.attempt, error)
                if task.attempt > max_retries:
                    failures.append((task, error))
                    bar.update(1)
                else:
                    delay = backoff_s * 2 ** (task.attempt - 1)
                    retry = replace(task, attempt=task.attempt + 1)
                    heapq.heappush(delayed, (time.monotonic() + delay, next(seq), retry))
        for ref, why in replacements:  # the report lists replacement actors too
            try:
                workers.append({**ray.get(ref, timeout=60), "replaced_after": why})
            except Exception as exc:  # noqa: BLE001 - a report detail, never fatal
                workers.append({"replaced_after": why, "describe_failed": _task_error(exc)})
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return results, failures, workers


def execute(
    tasks: list[Any],
    method: str,
    config: WorkerConfig,
    res: Resources,
    *,
    max_retries: int,
    backoff_s: float,
    progress: bool = True,
    actor_class: type = ShardWorker,
) -> tuple[list[Any], list[tuple[Any, str]], list[dict[str, Any]]]:
    """Connect Ray (unless connected), size the actor pool, run ``actor_class.<method>``
    over the tasks with a progress bar (shards done, images so far, images/s).

    ``actor_class`` is ``ShardWorker`` or a subclass (``recompress.QualityWorker``); each
    actor is built with ``config`` at the thread count ``plan_actors`` gives it.
    """
    import ray

    with ray_session(res.address):
        n, options, threads = plan_actors(res, len(tasks))
        config = replace(config, threads=threads)
        actor_cls = ray.remote(**options)(actor_class)
        log.info("%d workers, each %s", n, options)
        t0, images = time.perf_counter(), 0

        def on_result(result: Any) -> None:
            nonlocal images
            images += result.images_done
            rate = images / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(images=images, img_s=f"{rate:.1f}")

        desc = method.split("_")[0]
        with tqdm(total=len(tasks), unit="shard", desc=desc, disable=not progress) as bar:
            return run_tasks(
                tasks,
                method=method,
                make_actor=lambda: actor_cls.remote(config),
                n_actors=n,
                max_retries=max_retries,
                backoff_s=backoff_s,
                bar=bar,
                on_result=on_result,
            )
