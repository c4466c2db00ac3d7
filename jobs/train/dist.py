"""Multi-process (DDP-style) training helpers for ``oscar train``.

One process per device: ``oscar train --nproc N`` spawns N local processes, or ``torchrun``
starts them and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. The
backend is NCCL on CUDA (rank r uses ``cuda:<local rank>``) and gloo on CPU.

Why explicit collectives and not ``DistributedDataParallel``: the stage losses call model
pieces that are not ``forward`` (``ae.encode_posterior``, ``hyper.code_entropy``), stage 2
uses one random rate's hyper-encoder per step (most parameters get no gradient) and the
discriminator runs three times per step with a generator term whose gradient it must not
apply. DDP's reducer hooks into ``forward``/``backward`` pairs and fits none of that. So after
``backward`` the trainer averages the gradients itself (``all_reduce_grads``, one flat buffer
per dtype), which is what DDP computes, and keeps the rest in step by broadcasting from
rank 0: parameters and buffers at the start of a stage, buffers after every step (the VQ
codebooks are EMA buffers, updated in ``forward``, not by the optimiser).

Everything that writes (checkpoints, caches, logs, summary, the final model) happens on
rank 0 only; a resume reads the run directory on every rank, so with several nodes it must
be on a shared filesystem. With ``world_size == 1`` every method here is a no-op, so the
single-process path is the code it always was.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from jobs.common.ports import free_port

# Per-rank seeds are spaced by this much: seed+1, +11, +22 already name other streams.
RANK_SEED_STRIDE = 1000
# Elements per flat buffer of a collective (256 MB in fp32): bounds the extra memory a
# 1 B-parameter model (SD-2.1) needs for a broadcast, while small models go in one call.
BUCKET_NUMEL = 1 << 26
# Rank 0 alone runs the fit and the pmf refit while the others wait in a collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class DistContext:
    """Where this process stands in the group; world_size 1 = plain single-process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: torch.device = torch.device("cpu")  # where collective tensors live

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed for data sampling (rank 0 keeps ``seed``): different crops."""
        return seed + RANK_SEED_STRIDE * self.rank

    # -- collectives ---------------------------------------------------------------------
    def all_reduce_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average gradients over ranks, in place (what DDP does after backward).

        A parameter with no gradient on any rank keeps ``None`` (AdamW skips it, as in a
        single process); one used on some ranks only gets zeros elsewhere before the mean.
        """
        if not self.enabled:
            return
        params = [p for p in params if p.requires_grad]
        has = [p.grad is not None for p in params]
        has = torch.tensor(has, dtype=torch.int32, device=self.comm_device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)  # (P,) 1 where any rank has a gradient
        used = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in used]
        self._all_reduce_flat(grads)
        for g in grads:
            g.div_(self.world_size)

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with rank ``src``'s values (one flat buffer per dtype)."""
        if not self.enabled:
            return
        for group in _by_dtype(tensors):
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.comm_device)
            dist.broadcast(flat, src=src)
            _unflatten_into(flat, group)

    def broadcast_module(self, module: nn.Module) -> None:
        """Parameters and buffers from rank 0 (DDP does this when it wraps a module)."""
        self.broadcast_tensors([*module.parameters(), *module.buffers()])

    def broadcast_buffers(self, module: nn.Module) -> None:
        self.broadcast_tensors(list(module.buffers()))

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (pickled; for small results such as fit rows)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (e.g. the time limit was reached)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def _all_reduce_flat(self, tensors: list[torch.Tensor]) -> None:
        for group in _by_dtype(tensors):
            flat = torch.cat([t.reshape(-1) for t in group]).to(self.comm_device)  # (sum n,)
            dist.all_reduce(flat)
            _unflatten_into(flat, group)


def _by_dtype(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Tensors grouped by (dtype, device) so each group flattens into one buffer; groups
    are cut at BUCKET_NUMEL elements (a single larger tensor gets a bucket of its own)."""
    groups: dict[tuple, list[list[torch.Tensor]]] = {}
    filled: dict[tuple, int] = {}  # elements in the last bucket of each group
    for t in tensors:
        if not t.numel():
            continue
        key = (t.dtype, t.device)
        buckets = groups.setdefault(key, [[]])
        if buckets[-1] and filled[key] + t.numel() > BUCKET_NUMEL:
            buckets.append([])
            filled[key] = 0
        buckets[-1].append(t)
        filled[key] = filled.get(key, 0) + t.numel()
    return [b for buckets in groups.values() for b in buckets]


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Join the process group described by the environment (torchrun's variables).

    Returns the context and the device this rank trains on: ``cuda`` becomes
    ``cuda:<LOCAL_RANK>`` (one GPU per process). Without WORLD_SIZE > 1: single process,
    ``device`` unchanged.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        rank=rank,
        world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
    )
    ctx = DistContext(rank, world, local_rank, torch.device(device if cuda else "cpu"))
    return ctx, device


def launch(target: Callable, cfg, nproc: int) -> None:
    """Run ``target(cfg)`` in ``nproc`` local processes that form one group (127.0.0.1).

    ``target`` must be importable (spawned processes unpickle it by name); it calls
    ``init_distributed`` itself, as it would under torchrun.
    """
    import torch.multiprocessing as mp

    port = free_port()
    mp.spawn(_worker, args=(target, cfg, nproc, port), nprocs=nproc, join=True)


def _worker(local_rank: int, target: Callable, cfg, nproc: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
    )
    target(cfg)
