"""Was the text a report read held out from training? Computed from the windows actually read.

A live stream's windows are numbered by `TokenWindows` (global index i over the packed text of
one source). Training read window i when the training data config's part takes it:
part 'train' skips every `eval_every`-th window, part 'all' takes every window, and
`max_windows` stops the stream. A window read for evaluation is held out when training, on the
same packed text, never read it. Deciding this from `data.part == 'eval'` alone is wrong as
soon as `eval_every` differs between the two configs (an eval over `--data.eval-every 3` reads
windows that training with `eval_every 5` consumed) — hence this module.

    from sae.activations.provenance import held_out_summary
    held_out_summary(train_data, read_data, windows_read)   # {"held_out": ..., "windows_read": ...}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

# Fields that decide which text a window index points at; a difference means another text.
_TEXT_FIELDS = ("source", "dataset_config", "split", "text_column", "context_size", "bos")


def trained_on(train: dict[str, Any], index: np.ndarray) -> np.ndarray:
    """Which global window indices the training config's part read (bool per index)."""
    every = int(train.get("eval_every", 5) or 0)
    part = train.get("part", "train")
    if part == "all" or every == 0:
        taken = np.ones(len(index), bool)
    else:
        held = index % every == every - 1
        taken = held if part == "eval" else ~held
    max_windows = train.get("max_windows")
    if max_windows is not None:
        taken &= index < int(max_windows)
    return taken


def held_out_summary(
    train: dict[str, Any] | None,
    read: dict[str, Any] | None,
    windows_read: Iterable[int] | torch.Tensor | np.ndarray,
    model_same: bool = True,
) -> dict[str, Any]:
    """`held_out` (True, False or 'unknown') with its basis, from the windows actually read.

    `train`/`read` are DataConfig fields as dicts (None: unknown); `windows_read` the global
    window indices read (any order, repeats allowed).
    """
    if isinstance(windows_read, torch.Tensor):
        windows_read = windows_read.cpu().numpy()
    if not isinstance(windows_read, np.ndarray):
        windows_read = np.fromiter(windows_read, dtype=np.int64)
    idx = np.unique(windows_read.astype(np.int64))
    out: dict[str, Any] = {"windows_read": int(len(idx))}
    if read is None:
        return out | {"held_out": "unknown", "held_out_basis": "the text read is not recorded"}
    if train is None:
        return out | {
            "held_out": "unknown",
            "held_out_basis": "the SAE records no training data config to compare with",
        }
    differ = [f for f in _TEXT_FIELDS if train.get(f) != read.get(f)]
    if differ or not model_same:
        why = ", ".join(f"{f} {train.get(f)!r} vs {read.get(f)!r}" for f in differ)
        return out | {
            "held_out": True,
            "held_out_basis": f"a different packed text than training ({why or 'another model'}); "
            "the same documents may still occur in both",
            "windows_in_training": 0,
        }
    n_train = int(trained_on(train, idx).sum())
    basis = (
        f"{n_train} of the {len(idx)} windows read were training windows "
        f"(training: part {train.get('part', 'train')!r}, eval_every "
        f"{train.get('eval_every')}, max_windows {train.get('max_windows')})"
    )
    return out | {"held_out": n_train == 0, "held_out_basis": basis, "windows_in_training": n_train}
