"""torch.distributed set-up for runs launched by torchrun, and the few collectives the trainer uses.

Without ``WORLD_SIZE > 1`` in the environment (and no process group made by the caller) every
helper is a no-op on a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mvq.core.device import resolve_device


@dataclass
class DistContext:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when ``init_distributed`` created the process group

    @property
    def enabled(self) -> bool:
        """True in a multi-process run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, checkpoints and shows progress."""
        return self.rank == 0


def launched_world_size() -> int:
    """Number of processes of this run, known before ``init_distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU), if any."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        device = resolve_device(device_name, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(dist.get_rank(), dist.get_world_size(), device, owns_group=False)
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return DistContext(device=resolve_device(device_name))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device, owns_group=True)


def close_distributed(ctx: DistContext) -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.enabled:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over ranks (returned, not in place)."""
    if not ctx.enabled:
        return values
    out = values.detach().to(ctx.device, torch.float32, copy=True)
    dist.all_reduce(out)
    return out / ctx.world_size


def any_rank(flags: torch.Tensor, ctx: DistContext) -> list[bool]:
    """For each boolean in ``flags``: is it true on any rank (one all-reduce, one host sync)."""
    t = flags.detach().to(ctx.device, torch.float32).reshape(-1)
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (picklable objects)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class StopVote:
    """Every rank learns at each step boundary whether any rank was asked to stop, and by which
    signal: one all-reduce (MAX) of a CPU integer on a gloo group of its own, so a GPU run never
    waits for its device here. With one process it returns the local request.

    All ranks call it after every step, so they stop after the same step; the largest signal
    number wins (SIGTERM 15 over SIGUSR1 10 over SIGINT 2).
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.group: Any = None  # made by the first vote, on every rank at the same step

    def __call__(self, signum: int) -> int:
        """The signal number any rank was stopped by (0: none), agreed by every rank."""
        if not self.ctx.enabled:
            return signum
        if self.group is None:
            self.group = dist.new_group(backend="gloo")
        flag = torch.tensor([signum], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag)

    def close(self) -> None:
        """Destroy the group (before the default group, which the caller may keep)."""
        if self.group is not None and dist.is_initialized():
            dist.destroy_process_group(self.group)
        self.group = None
