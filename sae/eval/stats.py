"""Per-window sums and the bootstrap over windows (sequences) behind every 95% interval.

Every headline number of a suite is a function of a few sums over tokens (squared error,
target second moment, CE, ...). Keeping those sums per window (sequence) makes the bootstrap
cheap and honest: tokens within a sequence are correlated, so resampling whole sequences gives
the right width (docs/methods.md#bootstrap-over-windows), and resampling is one matmul,
counts [R, W] @ sums [W, ...], instead of R passes over the data (R resamples, W windows).

    acc = WindowSums()
    acc.add(window_N, n=ones_N, sq_err=err_N, sum_y=y_ND)
    totals = acc.totals()                       # name -> [W] or [W, D], float64
    counts_RW = resample_counts(acc.n_windows, n_boot=1000, seed=0)
    ci = bootstrap(totals, lambda s: s["sq_err"] / s["n"], counts_RW)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

Sums = dict[str, Tensor]


class WindowSums:
    """Sums of per-row quantities grouped by window id (rows of one window may arrive in
    several batches); float64 throughout."""

    def __init__(self) -> None:
        self._slot: dict[int, int] = {}
        self._parts: dict[str, list[tuple[Tensor, Tensor]]] = {}

    @property
    def n_windows(self) -> int:
        return len(self._slot)

    def add(self, window_N: Tensor, **values: Tensor) -> None:
        """Add rows: `window_N` [N] int window ids; each value [N] or [N, ...] per row."""
        uniq_U, inv_N = torch.unique(window_N.cpu(), return_inverse=True)
        slots_U = torch.tensor(
            [self._slot.setdefault(int(w), len(self._slot)) for w in uniq_U.tolist()],
            dtype=torch.long,
        )
        for name, v in values.items():
            v = v.detach().to("cpu", torch.float64)
            part = torch.zeros((len(uniq_U), *v.shape[1:]), dtype=torch.float64)
            self._parts.setdefault(name, []).append((slots_U, part.index_add_(0, inv_N, v)))

    def totals(self) -> Sums:
        """name -> [W, ...] sums per window (windows in first-seen order)."""
        W = self.n_windows
        out = {}
        for name, parts in self._parts.items():
            slots = torch.cat([s for s, _ in parts])
            vals = torch.cat([v for _, v in parts])
            out[name] = torch.zeros((W, *vals.shape[1:]), dtype=torch.float64).index_add_(
                0, slots, vals
            )
        return out


class Interval(NamedTuple):
    value: float
    """the statistic on all windows."""
    ci95: tuple[float, float] | None
    """2.5th and 97.5th percentiles over bootstrap resamples (None without resamples)."""


def _total(sums: Sums) -> Sums:
    return {k: v.sum(0) for k, v in sums.items()}


def resample_counts(n_windows: int, n_boot: int, seed: int) -> Tensor:
    """[n_boot, W] multiplicities: each row is one resample of W windows with replacement."""
    g = torch.Generator().manual_seed(seed)
    idx_RW = torch.randint(n_windows, (n_boot, n_windows), generator=g)
    counts = torch.zeros(n_boot, n_windows, dtype=torch.float64)
    return counts.scatter_add_(1, idx_RW, torch.ones_like(idx_RW, dtype=torch.float64))


def bootstrap(sums: Sums, stat: Callable[[Sums], Tensor], counts_RW: Tensor | None) -> Interval:
    """`stat` on the total sums, and its percentile 95% interval over window resamples.

    `stat` maps summed quantities (leading batch dims allowed) to a scalar per batch entry, so
    the R resamples are evaluated at once on `counts_RW @ sums`. Resamples whose statistic is not
    finite (e.g. a ratio with a zero denominator) are dropped before taking percentiles."""
    value = float(stat(_total(sums)))
    if counts_RW is None or counts_RW.shape[0] == 0:
        return Interval(value, None)
    boot = {k: torch.tensordot(counts_RW, v, dims=([1], [0])) for k, v in sums.items()}
    dist_R = stat(boot).double()
    dist_R = dist_R[torch.isfinite(dist_R)]
    if len(dist_R) < 2:
        return Interval(value, None)
    lo, hi = torch.quantile(dist_R, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Interval(value, (lo, hi))


def histogram(values: Tensor, bins: Tensor) -> dict[str, list[float]]:
    """{'bin_edges': [...], 'counts': [...]} of `values` over the given edges (JSON-able)."""
    counts = torch.histogram(values.double().cpu(), bins=bins.double().cpu()).hist
    return {"bin_edges": bins.tolist(), "counts": [int(c) for c in counts.tolist()]}
