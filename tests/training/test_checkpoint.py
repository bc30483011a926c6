"""Checkpoint durability: fsync, manifest checksums, fallback past a broken newest checkpoint."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from sae import fsutil
from sae.training import checkpoint as ckpt


def _parts(value: float) -> dict:
    def save_fn(folder: Path) -> None:
        fsutil.atomic_write_json(folder / "cfg.json", {"value": value})

    tensors = {"train.W": torch.full((64, 8), value)}
    return {
        "store_state": {"ranks": [{"group": 1}]},
        "trainer": {"step": int(value)},
        "saes": {"s": (save_fn, tensors)},
    }


def _run(tmp_path, tokens=(100, 200), keep=2) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    for t in tokens:
        ckpt.write_checkpoint(run, t, _parts(float(t)), keep=keep)
    return run


def test_checkpoint_has_a_manifest_that_verifies(tmp_path):
    run = _run(tmp_path)
    newest = run / "000000000200"
    files = set(ckpt._manifest(newest)["files"])
    assert {
        "store_state.json",
        "trainer.json",
        "s/cfg.json",
        "s/trainer_state.safetensors",
    } <= files
    assert ckpt.verify_checkpoint(newest) is None
    assert ckpt.latest_checkpoint(run) == newest
    assert not list(run.glob(".tmp-*")) and not list(run.glob(".old-*"))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: os.truncate(p / "s/trainer_state.safetensors", 100), "truncated"),
        (lambda p: _flip(p / "s/trainer_state.safetensors"), "corrupt"),
        (lambda p: (p / "trainer.json").unlink(), "trainer.json is missing"),
        (lambda p: (p / ckpt.MANIFEST).unlink(), "half-written"),
        (lambda p: (p / ckpt.MANIFEST).write_text("{not json"), "unreadable"),
    ],
)
def test_broken_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, reason):
    """Pins the resume fallback: truncated, flipped, missing file, half-written -> previous one."""
    run = _run(tmp_path)
    damage(run / "000000000200")
    lines: list[str] = []
    assert ckpt.latest_checkpoint(run, report=lines.append) == run / "000000000100"
    assert len(lines) == 1 and reason in lines[0] and "000000000200" in lines[0]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rewriting_the_same_position_never_leaves_no_checkpoint(tmp_path, monkeypatch):
    """Pins the old defect: write_checkpoint rmtree'd an existing folder of the same name before
    the rename, so a crash in that window (keep=1) left no valid checkpoint at all."""
    run = _run(tmp_path, tokens=(100,), keep=1)
    real = os.replace

    def crash_on_folder_rename(src, dst):
        if Path(src).is_dir():
            raise KeyboardInterrupt  # killed between the two steps
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_folder_rename)
    try:
        ckpt.write_checkpoint(run, 100, _parts(100.0), keep=1)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(os, "replace", real)
    assert ckpt.latest_checkpoint(run) == run / "000000000100"


def test_failed_write_keeps_the_previous_checkpoints_and_frees_its_space(tmp_path):
    """Disk full mid-checkpoint: the error propagates, nothing older is deleted, no .tmp left."""
    run = _run(tmp_path, keep=2)
    parts = _parts(300.0)

    def full(folder: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    parts["saes"]["s"] = (full, parts["saes"]["s"][1])
    with pytest.raises(OSError, match="No space"):
        ckpt.write_checkpoint(run, 300, parts, keep=2)
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["000000000100", "000000000200"]
    assert ckpt.latest_checkpoint(run) == run / "000000000200"


def test_checkpoints_past_the_resumed_one_are_dropped(tmp_path):
    """After a fallback to 100 (200 corrupt), the next write must not prune the good 100 in
    favour of the abandoned 200."""
    run = _run(tmp_path)
    _flip(run / "000000000200" / "trainer.json")
    assert ckpt.latest_checkpoint(run, report=lambda _: None) == run / "000000000100"
    ckpt.write_checkpoint(run, 150, _parts(150.0), keep=2)
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["000000000100", "000000000150"]


def test_writes_are_fsynced_file_then_folder(tmp_path, monkeypatch):
    """Pins durability: before, safetensors files and folders were never fsynced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    target = tmp_path / "out" / "w.safetensors"
    fsutil.atomic_save_safetensors(target, {"x": torch.zeros(3)})
    assert any(".sae-tmp" in s and s.endswith("w.safetensors") for s in synced)  # before the rename
    assert synced[-1] == str(target.parent)  # the rename
    synced.clear()
    run = _run(tmp_path / "b", tokens=(100,))
    assert str(run) in synced  # the checkpoint folder's rename
    assert any(s.endswith("trainer_state.safetensors") for s in synced)


def test_checkpoint_clock_fires_on_tokens_or_time_whichever_first():
    """Known answers for the periodic-checkpoint schedule (tokens on a grid, time since the last)."""
    now = [0.0]
    clock = ckpt.CheckpointClock(1000, 600, tokens=2500, clock=lambda: now[0])
    assert clock.next_tokens == 3000 and not clock.due(2999)
    assert clock.due(3000)
    clock.reset(3000)
    now[0] = 599.0
    assert not clock.due(3500)
    now[0] = 600.0
    assert clock.due(3500)
    off = ckpt.CheckpointClock(0, 0, tokens=0, clock=lambda: now[0])
    now[0] = 1e9
    assert not off.due(10**12)


def test_write_leftovers_are_found_from_the_staging_folder_and_nothing_else(tmp_path):
    """Pins what `clear_staging` (run by the trainer on the run folder before a run continues
    it) deletes: the staging folder the run's marker records, where every write into the run
    keeps its temporaries, and nothing else. Before, leftovers were found by matching names,
    and a user's `.notes.txt.tmp` or `.old-<name>` folder beside the checkpoints matched."""
    run = fsutil.claim(tmp_path / "run", "run")
    user = [
        ".config.yaml.k2j4.tmp", ".s.tmp-ab12/", ".tmp-000000001024/", ".old-000000001024/",
        ".old-s/", "config.yaml", ".gitkeep", "000000001024/", "s/", ".tmp-photos/",
        ".old-backup/", ".notes.txt.tmp",
    ]  # fmt: skip
    for name in user:
        path = run / name.rstrip("/")
        if name.endswith("/"):
            path.mkdir()
            (path / "cfg.json").write_text("{}")
        else:
            path.write_text("x")
    killed = run / fsutil.STAGING / "w.safetensors.k1ll3d"  # a write a SIGKILL cut short
    killed.mkdir(parents=True)
    (killed / "w.safetensors").write_text("half")
    fsutil.clear_staging(run, "run")
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [fsutil.MARKER, *(n.rstrip("/") for n in user)]
    )
    with pytest.raises(fsutil.ForeignFolderError, match="written by sae as a training run"):
        fsutil.clear_staging(run, "cache")
