"""Distributed agreement: collectives on the backend's device, BatchTopK threshold and dead-latent
counters identical and global across ranks. Two real gloo processes (torch.multiprocessing)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from sae import dist


def _in_group(rank: int, world: int, store_path: str, fn, out) -> None:
    tdist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world
    )
    try:
        out[rank] = fn(rank)
    finally:
        tdist.destroy_process_group()


def _spawn(tmp_path, fn, world: int = 2) -> list:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_in_group, args=(world, str(tmp_path / "store"), fn, out), nprocs=world, join=True)
        return [out[r] for r in range(world)]


def _batchtopk_step(rank: int):
    """One training step of a BatchTopK SAE on rank-specific data (ranks see different rows)."""
    from sae.model.sae import SAEConfig
    from sae.model.step import Batch
    from sae.training.members import Member

    torch.manual_seed(0)
    cfg = SAEConfig(architecture="batchtopk", d_in=8, d_sae=32, k=2)
    m = Member("m", cfg, "h", None, 1e-3, "cpu")
    for t in m.sae.state_dict().values():
        dist.broadcast_(t)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(100 + rank)) * (1 + rank)
    dead = m.tokens_since_fired >= 10**9
    out = m.loss(Batch(x), dead, 1.0)
    m.after_step(out, dead, torch.tensor(True))
    return m.sae.threshold.clone(), m.tokens_since_fired.clone()


def test_batchtopk_threshold_and_dead_counters_agree_across_ranks(tmp_path):
    """Pins two defects: each rank kept its own BatchTopK threshold estimate (the saved SAE
    depended on rank 0's rows only), and dead-latent counters grew by local rows, so with N
    ranks a latent was declared dead only after N times dead_tokens global tokens."""
    (t0, c0), (t1, c1) = _spawn(tmp_path, _batchtopk_step)
    assert torch.equal(t0, t1) and bool((t0 > 0).all())
    assert torch.equal(c0, c1)
    never_fired = c0 > 0
    assert never_fired.any() and bool((c0[never_fired] == 2 * 16).all())


class _FakeNccl:
    """Collectives that, like NCCL, refuse a tensor not prepared on the backend's device.

    The backend device here is the CPU (there is no GPU), so the guard checks that every tensor
    reaching a collective went through `dist.to_comm_device` first, which is what puts it on
    the GPU under NCCL; the step count, scale, stop flag and token count used to be CPU tensors
    handed straight to torch.distributed."""

    def __init__(self, monkeypatch):
        self.prepared: set[int] = set()
        self.calls = 0
        real_to = dist.to_comm_device
        real = {name: getattr(tdist, name) for name in ("all_reduce", "broadcast")}

        def to_comm(t):
            out = real_to(t)
            self.prepared.add(id(out))
            return out

        def guard(name):
            def call(t, *args, **kwargs):
                self.calls += 1
                if id(t) not in self.prepared:
                    raise RuntimeError(f"fake NCCL: {name} got a tensor not on the device")
                return real[name](t, *args, **kwargs)

            return call

        monkeypatch.setattr(dist, "to_comm_device", to_comm)
        for name in real:
            monkeypatch.setattr(tdist, name, guard(name))


def test_training_under_a_fake_nccl_guard(tmp_path, monkeypatch):
    """A whole run (setup, steps, stop-flag agreement, checkpoint, held-out scoring) in a
    one-process group with the guard: every collective gets a tensor on the backend device."""
    import numpy as np

    from sae.config.schema import StoreConfig, TrainConfig
    from sae.model.sae import SAEConfig
    from sae.training.train import train

    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((3000, 8), np.float32))
    tdist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        guard = _FakeNccl(monkeypatch)
        cfg = TrainConfig(
            activations=str(tmp_path / "a.npy"),
            sae=SAEConfig(architecture="batchtopk", d_sae=32, k=2),
            store=StoreConfig(buffer_tokens=1024, batch_size=128, normalize=True),
            out=str(tmp_path / "run"),
            quiet=True,
            eval_tokens=256,
        )
        assert train(cfg)
        assert guard.calls > 20
    finally:
        tdist.destroy_process_group()


def test_comm_device_is_the_gpu_under_nccl(monkeypatch):
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert dist.comm_device() == torch.device("cuda", 1)
    monkeypatch.setattr(tdist, "get_backend", lambda *a: "gloo")
    assert dist.comm_device() == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_under_real_nccl(tmp_path):
    """On a GPU: a one-process NCCL group rejects CPU tensors in collectives for real."""
    import numpy as np

    from sae.config.schema import StoreConfig, TrainConfig
    from sae.model.sae import SAEConfig
    from sae.training.train import train

    os.environ.setdefault("LOCAL_RANK", "0")
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((3000, 8), np.float32))
    tdist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        cfg = TrainConfig(
            activations=str(tmp_path / "a.npy"),
            sae=SAEConfig(architecture="batchtopk", d_sae=32, k=2),
            store=StoreConfig(buffer_tokens=1024, batch_size=128, normalize=True),
            out=str(tmp_path / "run"),
            quiet=True,
            eval_tokens=256,
        )
        cfg.model.device = "cuda"
        assert train(cfg)
    finally:
        tdist.destroy_process_group()
