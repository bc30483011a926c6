"""torch.distributed helpers that become no-ops in a single process (STYLE.md habit 8)."""

from __future__ import annotations

import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        t /= world_size()
    return t


def barrier() -> None:
    if is_distributed():
        tdist.barrier()
