"""torch.distributed helpers that become no-ops in a single process, so distributed code is
invisible when torchrun is not used."""

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
        t = all_reduce(t, "sum") / world_size()
    return t


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (no-op otherwise)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def comm_device() -> torch.device:
    """Where this process group's collectives run: this rank's GPU under NCCL (which refuses
    CPU tensors), the CPU under gloo."""
    if is_distributed() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_comm_device(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` on `comm_device()`, for a collective to work on."""
    return t.to(comm_device(), copy=True)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The reduction over ranks, on the device `t` is on (computed on the backend's device)."""
    if is_distributed():
        work = to_comm_device(t)
        ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}
        tdist.all_reduce(work, op=ops[op])
        t = work.to(t.device)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In place: every rank gets rank `src`'s values (how DDP starts replicas equal)."""
    if is_distributed():
        work = to_comm_device(t)
        tdist.broadcast(work, src)
        t.copy_(work)
    return t


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


# -- agreement between ranks: each returns its input unchanged on one process ------------------


def all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """Elementwise: True only where every rank holds True (e.g. all ranks skip a non-finite
    step together, or the gradient all-reduce of the others would hang)."""
    if not is_distributed():
        return flag
    return all_reduce(flag.to(torch.int32), "min").bool()


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """Elementwise: True where some rank holds True (e.g. a latent fired on any rank's rows)."""
    if not is_distributed():
        return flag
    return all_reduce(flag.to(torch.int32), "max").bool()


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' integers (e.g. a stop signal that reached ranks at different
    steps: every rank stops at the same one)."""
    if not is_distributed():
        return value
    return int(all_reduce(torch.tensor(value), "max"))


def max_each(*values: int) -> list[int]:
    """Each of several integers' largest value over ranks, in one collective (e.g. the stop
    signal and 'a checkpoint is due by wall time', whose clocks differ between ranks)."""
    if not is_distributed():
        return list(values)
    return [int(v) for v in all_reduce(torch.tensor(values), "max").tolist()]


def min_over_ranks(value: int) -> int:
    """The smallest of the ranks' integers (e.g. steps per epoch when ranks hold a few rows
    more or less: all stop at the smallest count)."""
    if not is_distributed():
        return value
    return int(all_reduce(torch.tensor(value), "min"))


def average_gradients(params) -> None:
    """Data parallel: replace every gradient by its mean over ranks, as DDP does."""
    if not is_distributed():
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(all_reduce_mean(p.grad))
