"""Where a worker runs: its torch device from the GPUs Ray assigned it, and its Ray node.

Used by every process that holds a ``Codec`` on Ray: the shard worker (``worker.py``) and
decode-on-read (``archive.py``). Outside Ray (tests, one-off use) there is no assignment:
the CPU.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

# Tests only: Ray's GPUs are pretend ones (``ray.init(num_gpus=N)`` on a machine without
# CUDA), so an actor given one runs on the CPU instead of failing to start.
FAKE_GPUS_ENV = "OSCAR_FAKE_GPUS"


def pick_device(gpu_ids: list[Any]) -> str:
    """cuda:0 when Ray gave this actor a GPU, else cpu; a GPU without CUDA is an error.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s), so inside the actor it is cuda:0
    (one: ``check_resources`` refuses more than one GPU per worker). A GPU slot without
    CUDA is a broken node (a CPU-only torch, a driver that does not load): falling back to
    the CPU would hold the GPU while coding at CPU speed, so the actor fails to start and
    the job stops with this message (``dispatch.WorkersFailedToStart``).
    """
    if not gpu_ids:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if os.environ.get(FAKE_GPUS_ENV) == "1":
        return "cpu"
    raise RuntimeError(
        f"Ray assigned GPU {', '.join(map(str, gpu_ids))} to this worker "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) but "
        f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
        f"{torch.version.cuda}): no usable CUDA device on node {socket.gethostname()}; "
        "for CPU workers pass --gpus-per-worker 0"
    )


def ray_gpu_ids() -> list[Any]:
    """The GPU ids Ray assigned to this process ([] outside Ray or without GPUs)."""
    try:
        import ray
    except ImportError:  # the plain class works without Ray (tests, one-off use)
        return []
    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def ray_node() -> tuple[str | None, str | None]:
    """(node id, node IP) of the Ray node this process runs on; (None, None) outside Ray."""
    try:
        import ray
    except ImportError:
        return None, None
    if not ray.is_initialized():
        return None, None
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ray.util.get_node_ip_address()
