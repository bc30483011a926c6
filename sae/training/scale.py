"""The activation scale: one factor per hook that brings a run's activations to unit mean squared
norm, estimated once, applied to every training and held-out batch, folded into the saved SAE.

    scale = ActivationScale(estimate=True)
    store.on_first_chunk = scale.estimate       # the stream's first rows, before any batch
    acts = scale.apply(acts)                     # every training and held-out batch
    meta = scale.fold(export_sae, hook, target)  # saved weights map raw to raw activations

The trainer owns it (saved in each checkpoint's trainer.json as `scale`, the hook -> factor
map), held-out scoring uses it, and the store never rescales. With `store.normalize` off it is
the identity: no factors, nothing applied, 1 folded.
"""

from __future__ import annotations

import torch

from sae import dist
from sae.config import ConfigError
from sae.model.sae import SAE

_BLOCK_ROWS = 8192
"""rows summed in float64 at a time: a float64 copy of a whole chunk would double peak memory."""


def unit_norm_factor(hook: str, x_ND: torch.Tensor) -> float:
    """The factor s with mean ||s x||^2 = 1 over the finite rows of `x_ND` (a NaN row's batch is
    skipped in training; it must not poison the scale)."""
    total, n = 0.0, 0
    for i in range(0, len(x_ND), _BLOCK_ROWS):
        blk = x_ND[i : i + _BLOCK_ROWS].double()
        ok = torch.isfinite(blk).all(1)
        total, n = total + float(blk[ok].pow(2).sum()), n + int(ok.sum())
    if total == 0:
        raise ConfigError(
            f"the first {len(x_ND):,} rows of hook {hook!r} (the chunk the normalisation scale "
            "is measured on) are all zero or NaN; shuffle the rows or pass "
            "--store.normalize False."
        )
    return (total / n) ** -0.5


class ActivationScale:
    """hook -> factor; `factors` None until `estimate` has read the first rows, {} for none."""

    def __init__(self, estimate: bool):
        self.factors: dict[str, float] | None = None if estimate else {}

    def estimate(self, rows: dict[str, torch.Tensor]) -> None:
        """Factors from `rows` (the first chunk of the stream), rank 0's on every rank, so
        replicas train on the same numbers."""
        local = {h: unit_norm_factor(h, x) for h, x in rows.items()}
        hooks = sorted(local)
        t = dist.broadcast_(torch.tensor([local[h] for h in hooks], dtype=torch.float64))
        self.factors = dict(zip(hooks, t.tolist(), strict=True))

    def apply(self, acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`acts` (hook -> rows) times each hook's factor; unchanged without factors."""
        if not self.factors:
            return acts
        return {h: x * self.factors.get(h, 1.0) for h, x in acts.items()}

    def pair(self, hook: str, target: str | None) -> tuple[float, float]:
        """(input, target) factors of an SAE reading `hook` (and writing `target`): 1 for a
        hook without one; the input's for an SAE's own target."""
        f = self.factors or {}
        s_in = f.get(hook, 1.0)
        return s_in, f.get(target, 1.0) if target else s_in

    def fold(self, sae: SAE, hook: str, target: str | None) -> dict[str, float]:
        """Rewrite `sae` (trained on scaled activations) to map raw activations to raw
        reconstructions; the factors folded, as saved in cfg.json's `normalization_folded`."""
        s_in, s_out = self.pair(hook, target)
        sae.fold_input_scale(s_in, s_out)
        return {"input_scale": s_in, "target_scale": s_out}

    def state_dict(self) -> dict[str, float] | None:
        return self.factors

    def load_state_dict(self, factors: dict[str, float] | None) -> None:
        if factors is not None:
            self.factors = dict(factors)
