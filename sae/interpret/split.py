"""Which held-out windows explain and which test: a fixed hash of the window index.

delphi draws explanation and test examples independently from the same activation-quantile
slices, so an explainer can see part of what it is tested on; here a window belongs to exactly
one side, decided before any activation is seen (docs/methods.md#interpretability-scores).
"""

from __future__ import annotations

import numpy as np

EXPLAIN, TEST = 0, 1


def window_side(win_N: np.ndarray, seed: int = 0) -> np.ndarray:
    """0 (explanation) or 1 (test) per window index: the low bit of splitmix64(index + seed·φ),
    so the split is balanced, independent of window order and fixed for a seed."""
    with np.errstate(over="ignore"):
        z = np.asarray(win_N, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)).astype(np.int64)
