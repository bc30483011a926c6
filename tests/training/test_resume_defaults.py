"""Crash-safe defaults: periodic checkpoints, `--resume --out DIR` alone, resumable from the
start; and the small training defects found by review (one-row batch, `--activations=`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae.cli import main
from sae.training import checkpoint as ckpt
from sae.training.train import Trainer


def _acts(tmp_path, n=6000, name="acts.npy"):
    x = np.random.default_rng(0).standard_normal((n, 8), dtype=np.float32)
    np.save(tmp_path / name, x)
    return str(tmp_path / name)


def _args(acts, out, *extra):
    return ["train", "--activations", acts, "--out", str(out), "--sae.d-sae", "32", "--sae.k",
            "3", "--store.batch-size", "256", "--store.buffer-tokens", "1024", "--eval-tokens",
            "512", "--quiet", *extra]  # fmt: skip


def _final(out):
    (folder,) = (out / "final").iterdir()
    return load_file(str(folder / "sae_weights.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stop_at(monkeypatch, step, how):
    real = Trainer._step

    def step_then_stop(self, m, batch, lr, sparsity):
        real(self, m, batch, lr, sparsity)
        if self.step == step:
            how(self)

    monkeypatch.setattr(Trainer, "_step", step_then_stop)
    return real


def test_resume_with_only_out_continues_the_saved_config(tmp_path, monkeypatch, capsys):
    """Pins the defect: `sae train --out X --resume` compared the default config with the saved
    one ("differs in ['sae']") instead of continuing it."""
    acts = _acts(tmp_path)
    main(_args(acts, tmp_path / "full", "--sae.architecture", "jumprelu"))
    real = _stop_at(monkeypatch, 9, lambda self: setattr(self, "_stop_signal", 2))
    with pytest.raises(SystemExit):
        main(_args(acts, tmp_path / "cut", "--sae.architecture", "jumprelu"))
    monkeypatch.setattr(Trainer, "_step", real)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a field that may not change on resume
        main(["train", "--out", str(tmp_path / "cut"), "--resume", "--sae.d-sae", "64"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "sae.d_sae=64" in err, err
    main(["train", "--out", str(tmp_path / "cut"), "--resume", "--checkpoint-every", "5000"])
    assert _same(_final(tmp_path / "full"), _final(tmp_path / "cut"))


def test_killed_before_the_first_checkpoint_resumes_from_the_start(tmp_path, monkeypatch):
    """Pins the dead end: config.yaml written, no checkpoint yet, and then the folder refused
    both a fresh start ("already holds a run") and --resume ("holds no checkpoint")."""
    acts = _acts(tmp_path)
    main(_args(acts, tmp_path / "full"))

    def die(self):
        raise KeyboardInterrupt

    real = _stop_at(monkeypatch, 4, die)
    with pytest.raises(SystemExit):
        main(_args(acts, tmp_path / "cut"))
    monkeypatch.setattr(Trainer, "_step", real)
    assert (tmp_path / "cut" / "config.yaml").exists()
    assert ckpt.latest_checkpoint(tmp_path / "cut") is None
    main(_args(acts, tmp_path / "cut", "--resume"))
    assert _same(_final(tmp_path / "full"), _final(tmp_path / "cut"))
    main(_args(acts, tmp_path / "never-started", "--resume"))  # no folder at all: a fresh run
    assert _same(_final(tmp_path / "full"), _final(tmp_path / "never-started"))


def test_periodic_checkpoints_are_on_by_default_by_wall_time(tmp_path, monkeypatch):
    """With no --checkpoint-every, a checkpoint is written every CHECKPOINT_SECONDS."""
    import sae.training.train as train_module

    acts = _acts(tmp_path)
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 1e-9)  # due at every step
    written = []
    real = Trainer.checkpoint
    monkeypatch.setattr(Trainer, "checkpoint", lambda self: written.append(self.step) or real(self))
    main(_args(acts, tmp_path / "run"))
    assert len(written) > 10 and written == sorted(set(written))


def test_one_row_last_batch_is_skipped_not_raised(tmp_path):
    """Pins the defect: a last batch of one row raised in the loss (the FVU needs two rows)."""
    acts = _acts(tmp_path, n=256 * 4 + 1)
    main(_args(acts, tmp_path / "run"))
    assert (tmp_path / "run" / "final").is_dir()


def test_activations_with_equals_sign_is_not_the_builtin_default(tmp_path, monkeypatch):
    """Pins the defect: `--activations=acts.npy` made the CLI pick the built-in default run
    (MiniLM, BUILTIN_TOKENS) because it looked for the word '--activations' only."""
    import sae.training.train as train_module

    acts = _acts(tmp_path)
    seen = {}

    def record(cfg):
        seen["cfg"] = cfg
        return [tmp_path]

    monkeypatch.setattr(train_module, "train", record)
    main(["train", f"--activations={acts}", "--out", str(tmp_path / "r"), "--quiet"])
    assert seen["cfg"].activations == acts and seen["cfg"].total_tokens is None
