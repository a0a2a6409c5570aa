"""Map building on several processes (torchrun): rank 0 runs the stages that do not split, every
rank extracts features for its share of the images and trains the recognizer on its share of the
training views (DistributedDataParallel: gloo on CPUs, NCCL on GPUs).

Outside torchrun (no WORLD_SIZE, or 1) everything here is a no-op for one process.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment; False when there is none."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # SfM on rank 0 may take hours on a large site while the other ranks wait
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
    return True


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (one process: [obj])."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def shard(n: int) -> range:
    """This rank's share of n items: every world()-th, starting at its rank."""
    return range(rank(), n, world())


def from_rank0(obj: Any) -> Any:
    """Rank 0's `obj` on every rank: a decision all ranks must take alike."""
    return gather(obj)[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any (e.g. one rank hit the time cap: all stop)."""
    return any(gather(bool(flag)))
