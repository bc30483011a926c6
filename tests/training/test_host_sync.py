"""A training step reads back from the device only what decides what it does next.

On a GPU every `.item()`, `bool(tensor)`, boolean-mask index, `nonzero` or `bincount` makes the
host wait until the device has finished all work queued so far, so the next kernels start late.
These tests watch the aten ops of one `Trainer._step` (forward, backward, clipping, Adam,
decoder norm, dead-latent counter, the log line's figures) on CPU, where the same ops run.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sae.config.schema import StoreConfig, TrainConfig
from sae.model.sae import SAEConfig
from sae.training.train import Trainer

READS_BACK = {
    "aten._local_scalar_dense.default": "item",  # .item(), bool(), int(), float() of a tensor
    "aten.nonzero.default": "nonzero",
    "aten.masked_select.default": "mask",
    "aten.bincount.default": "bincount",
    "aten._unique2.default": "unique",
    "aten.unique_consecutive.default": "unique",
    "aten.repeat_interleave.Tensor": "repeat_interleave",
    "aten.is_nonzero.default": "item",
    "aten.equal.default": "item",
}


def _bool_index(args) -> bool:
    """aten.index / index_put_ with a boolean mask: the result's size is read back."""
    return any(
        isinstance(a, (list, tuple))
        and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in a)
        for a in args
    )


class ReadBacks(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in READS_BACK:
            self.ops[READS_BACK[name]] += 1
        elif name.startswith(("aten.index.", "aten.index_put")) and _bool_index(args):
            self.ops["mask"] += 1
        return func(*args, **(kwargs or {}))


EXPECTED = {
    # for the TopK family, which latents are dead (AuxK's kernel depends on how many)
    "topk": {"nonzero": 1},
    # + BatchTopK's exactness check (did some row keep all its candidates)
    "batchtopk": {"item": 1, "nonzero": 1},
    "matryoshka": {"item": 1, "nonzero": 1},
    "relu": {},
    "jumprelu": {},
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_a_training_step_reads_back_only_its_decisions(tmp_path, arch):
    """Pins issue 11's "no host synchronisation per step outside the logging cadence". Before
    the fix a TopK step read back nine values (the log line's four figures every step, the
    fired latents by boolean mask twice, bincount in both sparse backwards); a BatchTopK step
    also branched on its threshold estimate in Python. Read-backs left are the decisions listed
    in EXPECTED; the log line's figures are read when a line is written. Whether the loss was
    finite was read every step too, until the fused Adam step took the decision on the device."""
    x = np.random.default_rng(0).normal(size=(8192, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    extra = {"matryoshka_prefixes": [16, 32, 64]} if arch == "matryoshka" else {}
    cfg = TrainConfig(
        activations=str(tmp_path / "x.npy"),
        sae=SAEConfig(architecture=arch, d_sae=64, k=4, **extra),
        store=StoreConfig(buffer_tokens=2048, batch_size=256, normalize=True),
        total_tokens=256 * 6,
        eval_tokens=256,
        dead_tokens=256,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    done = Trainer(cfg)
    done.fit()  # trained state: Adam moments, a BatchTopK threshold, dead-latent counts
    fresh = Trainer(dataclasses.replace(cfg, out=str(tmp_path / "again")))
    fresh.step = 1
    m = done.members[0]
    batch = m.batch(next(fresh.batches()))
    with ReadBacks() as seen:
        done._step(m, batch, 1.0, 1.0)
    assert dict(seen.ops) == EXPECTED[arch]
    assert set(m.last) == {"loss", "fvu", "l0", "dead_pct"}  # read at the log cadence


def test_under_torchrun_ranks_agree_on_stopping_at_the_log_cadence(tmp_path, monkeypatch):
    """Pins the loop's other read-back: ranks agree on a stop signal and a due checkpoint by a
    collective whose result the host reads, which on GPUs waits for the step to finish. It ran
    after every step; under torchrun it now runs at each log line and once after the loop
    (a one-process gloo group stands in for torchrun here)."""
    import torch.distributed as tdist

    from sae import dist

    x = np.random.default_rng(0).normal(size=(4096, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cfg = TrainConfig(
        activations=str(tmp_path / "x.npy"),
        sae=SAEConfig(d_sae=32, k=4),
        store=StoreConfig(buffer_tokens=1024, batch_size=128),
        total_tokens=128 * 12,
        eval_tokens=128,
        log_every=5,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    calls = []
    real = dist.max_each
    monkeypatch.setattr(dist, "max_each", lambda *v: calls.append(v) or real(*v))
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        Trainer(cfg).fit()
    finally:
        tdist.destroy_process_group()
    assert len(calls) == 4  # steps 5, 10 and 12 (the last), then after the loop
    calls.clear()
    Trainer(dataclasses.replace(cfg, out=str(tmp_path / "one"))).fit()
    assert len(calls) == 13  # one process: every step, free on the host, and after the loop
