"""Checkpoints: one folder per checkpoint, written whole under a temporary name, then renamed.

    <run>/<tokens:012d>/store_state.json                  data position (ActivationStore.state_dict)
    <run>/<tokens:012d>/trainer.json                      step, tokens, counters (JSON)
    <run>/<tokens:012d>/<sae name>/cfg.json ...           SAELens folder, normalisation folded in
    <run>/<tokens:012d>/<sae name>/trainer_state.safetensors
        train.*  the SAE's training-space tensors (exact, unfolded), optim.<i>.*  Adam moments and
        step, dead.tokens_since_fired; no pickle anywhere.
    <run>/latest                                          name of the newest complete checkpoint

A crash mid-write leaves only a `.tmp-*` folder that is never read, so the latest checkpoint is
always whole. Older checkpoints beyond `keep` are deleted after the new one is in place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from sae import dist
from sae.config import ConfigError, TrainConfig
from sae.fsutil import atomic_save_safetensors, atomic_write_json, atomic_write_text


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            state.setdefault(int(i), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def write_checkpoint(run: Path, tokens: int, parts: dict, keep: int = 2) -> Path:
    """`parts` = {"store_state": dict, "trainer": dict, "saes": {name: (save_fn, tensors)}}.

    save_fn(folder) writes the SAELens folder; tensors go to trainer_state.safetensors.
    """
    final = run / f"{tokens:012d}"
    tmp = run / f".tmp-{tokens:012d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    atomic_write_json(tmp / "store_state.json", parts["store_state"])
    atomic_write_json(tmp / "trainer.json", parts["trainer"])
    for name, (save_fn, tensors) in parts["saes"].items():
        save_fn(tmp / name)
        atomic_save_safetensors(tmp / name / "trainer_state.safetensors", tensors)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(run / "latest", final.name + "\n")
    checkpoints = sorted(p for p in run.iterdir() if p.is_dir() and p.name.isdigit())
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    marker = run / "latest"
    if not marker.is_file():
        return None
    path = run / marker.read_text().strip()
    return path if path.is_dir() else None


def read_checkpoint(path: Path, names: list[str]) -> dict:
    return {
        "store_state": json.loads((path / "store_state.json").read_text()),
        "trainer": json.loads((path / "trainer.json").read_text()),
        "saes": {n: load_file(str(path / n / "trainer_state.safetensors")) for n in names},
    }


def check_run_folder(tcfg: TrainConfig) -> None:
    """Refuse, before any work: --resume without a checkpoint or with a changed config (fields
    in RESUME_FREE may change); a fresh run into a folder that already holds one."""
    run = Path(tcfg.out)
    saved = run / "config.yaml"
    if not tcfg.resume:
        if saved.exists():
            raise ConfigError(
                f"out={str(run)!r} already holds a run; pass --resume to continue it or "
                "choose another --out."
            )
        return
    if latest_checkpoint(run) is None:
        raise ConfigError(f"--resume: {str(run)!r} holds no checkpoint to resume from.")
    old = yaml.safe_load(saved.read_text())
    new = dataclasses.asdict(tcfg)
    diff = sorted(k for k in new if k not in TrainConfig.RESUME_FREE and old.get(k) != new[k])
    if diff:
        raise ConfigError(
            f"--resume: the run in {str(run)!r} was made with a different config "
            f"(differs in {diff})."
        )


def rank_store_state(state: dict) -> dict:
    """This rank's store position in a checkpoint read by `read_checkpoint`."""
    states = state["store_state"]["ranks"]
    if len(states) != dist.world_size():
        raise ConfigError(
            f"--resume: the checkpoint was written by {len(states)} processes, this run has "
            f"{dist.world_size()}."
        )
    return states[dist.rank()]
