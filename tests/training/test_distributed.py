"""`torchrun --nproc_per_node 2 -m sae train` on CPU (gloo): completes, and resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _torchrun(args, cwd, **kw):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "sae",
        "train",
        *args,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def test_two_process_training_interrupted_and_resumed_is_bit_identical(tmp_path):
    """Pins rank-sharded data, agreed step counts and stop flags, and per-rank store states."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((300_000, 16), dtype=np.float32))
    np.save(tmp_path / "h.npy", rng.standard_normal((4000, 16), dtype=np.float32))
    args = [
        "--activations",
        "a.npy",
        "--eval-activations",
        "h.npy",
        "--sae.d-sae",
        "32",
        "--sae.k",
        "4",
        "--store.batch-size",
        "256",
        "--store.buffer-tokens",
        "4096",
        "--quiet",
        "--checkpoint-every",
        "20000",
    ]
    full = _torchrun([*args, "--out", "full"], tmp_path)
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out
    assert out.strip().splitlines()[-1] == "full/final/activations-topk-32-k4"

    cut = _torchrun([*args, "--out", "cut"], tmp_path)
    deadline = time.time() + 300
    while not (tmp_path / "cut" / "latest").exists():
        assert time.time() < deadline and cut.poll() is None
        time.sleep(0.2)
    os.killpg(cut.pid, signal.SIGINT)
    out, _ = cut.communicate(timeout=300)
    assert not (tmp_path / "cut" / "final").exists(), out  # it really stopped midway
    resumed = _torchrun([*args, "--out", "cut", "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    a = load_file(str(tmp_path / "full/final/activations-topk-32-k4/sae_weights.safetensors"))
    b = load_file(str(tmp_path / "cut/final/activations-topk-32-k4/sae_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
