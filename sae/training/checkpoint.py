"""Checkpoints: one folder per checkpoint, written whole in the run's staging folder, then renamed.

    <run>/<tokens:012d>/store_state.json                  data position (ActivationStore.state_dict)
    <run>/<tokens:012d>/trainer.json                      step, tokens, counters (JSON)
    <run>/<tokens:012d>/<sae name>/cfg.json ...           SAELens folder, normalisation folded in
    <run>/<tokens:012d>/<sae name>/trainer_state.safetensors
        train.*  the SAE's training-space tensors (exact, unfolded), optim.<i>.*  Adam moments and
        step, dead.tokens_since_fired; no pickle anywhere.
    <run>/latest                                          name of the newest complete checkpoint

    <run>/<tokens:012d>/manifest.json                     size and sha256 of every other file

Each checkpoint is built in the run's staging folder (sae/fsutil.py `atomic_folder`), so a crash
mid-write leaves only what the run's resume clears from there; every file is fsynced before
the folder is renamed into place; older checkpoints beyond `keep` are deleted only after the new
one is in place. On resume a newest checkpoint that fails its manifest (truncated, flipped bytes,
a file missing, no manifest) is reported and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from sae import dist
from sae.config import ConfigError, hardware
from sae.config.schema import TrainConfig
from sae.fsutil import (
    atomic_folder,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    claim,
    kind_of,
    remove,
    require_ours,
    sha256_file,
)


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


class CheckpointClock:
    """When the next periodic checkpoint is due: every `every_tokens` tokens or `every_seconds`
    of wall time, whichever comes first (0 turns either off)."""

    def __init__(self, every_tokens: int, every_seconds: float, tokens: int, clock=time.monotonic):
        self.every_tokens, self.every_seconds, self.clock = every_tokens, every_seconds, clock
        self.reset(tokens)

    def reset(self, tokens: int) -> None:
        self.next_tokens = (
            (tokens // self.every_tokens + 1) * self.every_tokens if self.every_tokens else None
        )
        self.started = self.clock()

    def due(self, tokens: int) -> bool:
        by_tokens = self.next_tokens is not None and tokens >= self.next_tokens
        by_time = self.every_seconds > 0 and self.clock() - self.started >= self.every_seconds
        return by_tokens or by_time


MANIFEST = "manifest.json"
"""every file of the checkpoint with its size and sha256, written last: a folder without it, or
whose files do not match it, is not a checkpoint."""


def _manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        "files": {
            str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in files
        }
    }


def write_checkpoint(run: Path, tokens: int, parts: dict, keep: int = 2) -> Path:
    """`parts` = {"store_state": dict, "trainer": dict, "saes": {name: (save_fn, tensors)}}.

    save_fn(folder) writes the SAELens folder; tensors go to trainer_state.safetensors. The
    checkpoint is built in the run's staging folder, checksummed into its manifest, fsynced and
    renamed; older checkpoints are deleted only after that, so a crash at any moment leaves the
    previous checkpoint whole.
    """
    final = run / f"{tokens:012d}"
    if verify_checkpoint(final) is None:
        return final  # the same position was saved already: same step, same state
    claim(run, "run")
    with atomic_folder(final, "checkpoint") as tmp:
        atomic_write_json(tmp / "store_state.json", parts["store_state"])
        atomic_write_json(tmp / "trainer.json", parts["trainer"])
        for name, (save_fn, tensors) in parts["saes"].items():
            save_fn(tmp / name)
            atomic_save_safetensors(tmp / name / "trainer_state.safetensors", tensors)
        atomic_write_json(tmp / MANIFEST, _manifest(tmp))
    atomic_write_text(run / "latest", final.name + "\n")
    # Checkpoints past this one belong to a timeline abandoned by a resume from an older one.
    # Only folders that carry a checkpoint's marker are ever deleted here.
    checkpoints = sorted(p for p in run.iterdir() if p.name.isdigit() and _is_checkpoint(p))
    for stale in (p for p in checkpoints if int(p.name) > tokens):
        remove(stale, "checkpoint")
    older = [p for p in checkpoints if int(p.name) <= tokens]
    for old in older[:-keep] if keep > 0 else []:
        remove(old, "checkpoint")
    return final


def _is_checkpoint(path: Path) -> bool:
    """A folder `write_checkpoint` wrote: it carries our checkpoint marker."""
    return not path.is_symlink() and kind_of(path) == "checkpoint"


def verify_checkpoint(path: Path) -> str | None:
    """None if `path` is a complete checkpoint, else why not (one clause)."""
    if not path.is_dir():
        return "it does not exist"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (half-written)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, not {entry['bytes']} (truncated)"
        if sha256_file(file) != entry["sha256"]:
            return f"{name} does not match its checksum (corrupt)"
    return None


def latest_checkpoint(run: Path, report=print) -> Path | None:
    """The newest complete checkpoint in `run`; each newer broken one is reported in one line."""
    if not run.is_dir():
        return None
    checkpoints = sorted(
        (p for p in run.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True
    )
    for path in checkpoints:
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        report(f"warning: skipping checkpoint {path}: {problem}; trying the previous one.")
    return None


def read_checkpoint(path: Path, names: list[str]) -> dict:
    return {
        "store_state": json.loads((path / "store_state.json").read_text()),
        "trainer": json.loads((path / "trainer.json").read_text()),
        "saes": {n: load_file(str(path / n / "trainer_state.safetensors")) for n in names},
    }


def resolve_autocast(tcfg: TrainConfig) -> TrainConfig:
    """`tcfg` with `autocast: auto` made true or false. Under --resume it is the choice the run's
    config.yaml saved (a run keeps its numerics when resumed on other hardware); otherwise on
    exactly where `model.dtype: auto` picks bfloat16, with the same probe."""
    if tcfg.autocast != "auto":
        return tcfg
    saved = Path(tcfg.out) / "config.yaml"
    choice = None
    if tcfg.resume and saved.exists():
        choice = (yaml.safe_load(saved.read_text()) or {}).get("autocast")
    if not isinstance(choice, bool):
        choice = hardware.native_bf16(tcfg.model.device)
    return dataclasses.replace(tcfg, autocast=choice)


def check_run_folder(tcfg: TrainConfig) -> None:
    """Refuse, before any work: a folder that is not empty and not a run of ours
    (sae/fsutil.py), a fresh run into a folder that already holds one, or --resume
    with a config that differs from the saved one in a field not in RESUME_FREE. A folder with
    no checkpoint yet (or none at all) resumes from the beginning."""
    run = Path(tcfg.out)
    require_ours(run, "run")  # a folder that is not a run of ours is never written into
    saved = run / "config.yaml"
    if not tcfg.resume:
        if saved.exists():
            raise ConfigError(
                f"out={str(run)!r} already holds a run; pass --resume to continue it or "
                "choose another --out."
            )
        return
    if not saved.exists():
        return
    diff = resume_diff(yaml.safe_load(saved.read_text()) or {}, dataclasses.asdict(tcfg))
    if diff:
        field, old, new = diff[0]
        raise ConfigError(
            f"--resume: {field}={new!r} differs from the saved run's {old!r} in {str(run)!r}; "
            f"only {', '.join(TrainConfig.RESUME_FREE)} may change on resume."
        )


def resume_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted field, saved value, new value) for each field outside RESUME_FREE that differs."""
    out = []
    for key, value in new.items():
        if prefix + key in TrainConfig.RESUME_FREE:
            continue
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            out += resume_diff(before, value, f"{prefix}{key}.")
        elif before != value:
            out.append((prefix + key, before, value))
    return out


def rank_store_state(state: dict) -> dict:
    """This rank's store position in a checkpoint read by `read_checkpoint`."""
    states = state["store_state"]["ranks"]
    if len(states) != dist.world_size():
        raise ConfigError(
            f"--resume: the checkpoint was written by {len(states)} processes, this run has "
            f"{dist.world_size()}."
        )
    return states[dist.rank()]
