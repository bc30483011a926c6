"""Where an evaluated SAE's activations come from: held-out windows of its model (live), an
activation cache or matrix file (--activations), or its synthetic generator's held-out batches.

Every row carries a window (sequence) id for the bootstrap. Caches keep the harvest's window
index; matrix files and synthetic data have no windows, so consecutive blocks of `BLOCK_ROWS`
rows stand in for them (synthetic rows are i.i.d., so any grouping is exact there).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sae.activations.sources import LiveSource
from sae.eval.base import EvalTarget

BLOCK_ROWS = 128
"""rows per bootstrap unit where the source has no windows (matrix files, synthetic data)."""
SYNTHETIC_HELDOUT_START = 1 << 40
"""first synthetic batch index scored; [inferred] training reads batches from index 0 upward,
so these are never seen in training (SyntheticData batches are pure functions of the index)."""
SYNTHETIC_BATCH_ROWS = 4096


class RowBatch(NamedTuple):
    x_ND: Tensor
    """SAE input rows."""
    y_ND: Tensor
    """reconstruction target rows (x itself for an autoencoder)."""
    window_N: Tensor
    """window (sequence) id of each row, or its block id where there are no windows."""


class WindowBatch(NamedTuple):
    index_B: Tensor
    """global window index of each window."""
    ids_BT: Tensor
    """token ids."""
    keep_BT: Tensor
    """positions the SAE was trained on (BOS/special excluded as recorded in its metadata)."""


def window_batches(
    src: LiveSource, max_tokens: int, batch_windows: int, read: set[int]
) -> Iterator[WindowBatch]:
    """Held-out windows in order, `batch_windows` at a time, until `max_tokens` kept positions
    have been read (whole windows: the total may pass `max_tokens` by less than one window).
    Their global indices go into `read` (a target's `windows_read`: was the text held out?)."""
    batch: list[tuple[int, Tensor, Tensor]] = []
    total = 0

    def emit() -> WindowBatch:
        idx, ids, keep = zip(*batch, strict=True)
        read.update(idx)
        return WindowBatch(torch.tensor(idx), torch.stack(ids), torch.stack(keep))

    for i, w_T in src.windows.iter_from(0):
        keep_T = src.keep_mask(w_T[None])[0]
        batch.append((i, w_T, keep_T))
        total += int(keep_T.sum())
        if len(batch) == batch_windows or total >= max_tokens:
            yield emit()
            batch = []
        if total >= max_tokens:
            return
    if batch:
        yield emit()


def rows(target: EvalTarget, max_tokens: int) -> Iterator[RowBatch]:
    """The target's activation rows, at most `max_tokens` of them, any stream kind."""
    hook_in, hook_out = target.source_hooks
    seen = 0
    if target.stream == "synthetic":
        data = target.source
        j = SYNTHETIC_HELDOUT_START
        while seen < max_tokens:
            n = min(SYNTHETIC_BATCH_ROWS, max_tokens - seen)
            x_ND = data.sample(j, n).x_BD
            window_N = (seen + torch.arange(n)) // BLOCK_ROWS
            yield RowBatch(x_ND, x_ND, window_N)
            seen, j = seen + n, j + 1
        return
    for piece in target.source.pieces(0):
        x_ND = piece.rows[hook_in]
        n = min(len(x_ND), max_tokens - seen)
        y_ND = piece.rows[hook_out] if hook_out else x_ND
        if "window" in piece.meta:
            window_N = piece.meta["window"][:n].long()
            target.windows_read.update(torch.unique(window_N).tolist())
        else:
            window_N = (piece.cursor + torch.arange(n)) // BLOCK_ROWS
        yield RowBatch(x_ND[:n], y_ND[:n], window_N)
        seen += n
        if seen >= max_tokens:
            return


def finish_provenance(target: EvalTarget) -> dict[str, Any]:
    """The target's provenance with `held_out` decided from the windows its suites read."""
    from sae.activations.provenance import held_out_summary

    prov = dict(target.provenance)
    if target.stream != "live":
        return prov
    read = sorted(target.windows_read)
    return prov | held_out_summary(prov.get("train_data"), prov["data"], read)
