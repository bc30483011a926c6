"""Held-out scoring at the end of training: FVU, L0, dead latents, firing density.

FVU here is the fraction of variance unexplained: the summed squared error over the summed
squared deviation of the target from its mean over the held-out tokens (variance about the mean,
summed over dimensions), accumulated in float64. The `sae eval` suites build on these sums.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from sae import dist
from sae.activations.sources import LiveSource, SyntheticSource, open_source
from sae.activations.store import ActivationStore
from sae.config import StoreConfig

if TYPE_CHECKING:
    from sae.training.train import Trainer


class ReconstructionStats:
    """Streaming sums for FVU, L0 and per-latent firing counts."""

    def __init__(self, d_out: int, d_sae: int, device):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)
        self.n, self.sq_err, self.sum_y, self.sum_y2 = 0, z(()), z(d_out), z(d_out)
        self.l0_sum, self.fired = z(()), z(d_sae)

    @torch.no_grad()
    def update(self, y: torch.Tensor, y_hat: torch.Tensor, latents: torch.Tensor) -> None:
        y64 = y.double()
        self.n += len(y)
        self.sq_err += (y64 - y_hat.double()).pow(2).sum()
        self.sum_y += y64.sum(0)
        self.sum_y2 += y64.pow(2).sum(0)
        active = latents != 0
        self.l0_sum += active.sum()
        self.fired += active.sum(0)

    def all_reduce(self) -> None:
        """Sum the statistics over ranks (each scored its own share of the held-out data)."""
        for name in ("sq_err", "sum_y", "sum_y2", "l0_sum", "fired"):
            setattr(self, name, dist.all_reduce(getattr(self, name)))
        self.n = int(dist.all_reduce(torch.tensor(self.n)))

    def result(self) -> dict:
        total_var = (self.sum_y2 - self.sum_y.pow(2) / self.n).sum()
        density = self.fired / self.n
        return {
            "fvu": float(self.sq_err / total_var),
            "l0": float(self.l0_sum / self.n),
            "dead_pct": 100.0 * float((self.fired == 0).double().mean()),
            "dense_pct_1": 100.0 * float((density > 0.01).double().mean()),
            "dense_pct_10": 100.0 * float((density > 0.10).double().mean()),
            "eval_tokens": self.n,
            "log10_density": torch.log10(density + 1e-10).float().cpu(),
        }


def _eval_store(trainer: Trainer) -> tuple[ActivationStore | None, str]:
    tcfg = trainer.tcfg
    cfg = StoreConfig(
        buffer_tokens=max(2 * tcfg.store.batch_size, 8192),
        batch_size=tcfg.store.batch_size,
        exclude_bos=tcfg.store.exclude_bos,
        exclude_special=tcfg.store.exclude_special,
    )
    if tcfg.activations == "synthetic":
        src = SyntheticSource(tcfg.synthetic, tcfg.eval_tokens, held_out=True)
        return ActivationStore(src, cfg), "held-out synthetic samples (disjoint generator indices)"
    if tcfg.eval_activations is not None:
        src = open_source(
            tcfg.eval_activations, tcfg.model, tcfg.data, cfg, dist.rank(), dist.world_size()
        )
        return ActivationStore(src, cfg), tcfg.eval_activations
    live = trainer.source
    if isinstance(live, LiveSource) and tcfg.data.eval_every > 0:
        data = dataclasses.replace(tcfg.data, part="eval")
        src = LiveSource(
            live.model_cfg,
            data,
            cfg,
            dist.rank(),
            dist.world_size(),
            model=live.capture.model,
            tokenizer=live.windows.tokenizer,
        )
        return ActivationStore(
            src, cfg
        ), f"held-out windows (every {tcfg.data.eval_every}th) of {tcfg.data.source}"
    return None, "none"


@torch.no_grad()
def evaluate_members(trainer: Trainer) -> dict[str, dict]:
    """Score every SAE of the run on held-out activations, scaled as in training."""
    store, where = _eval_store(trainer)
    results = {}
    if store is None:
        dist.print0(
            "no held-out data (give --eval-activations); scores below are on training batches"
        )
        store = ActivationStore(
            trainer.source, dataclasses.replace(trainer.tcfg.store, normalize=False)
        )
        where = "training stream (not held out)"
    stats = {
        m.name: ReconstructionStats(m.sae.cfg.width_out, m.sae.cfg.d_sae, trainer.device)
        for m in trainer.members
    }
    seen = 0
    for batch in store:
        for m in trainer.members:
            s_in, s_out = trainer._scales(m)
            x = batch[m.hook].to(trainer.device) * s_in
            y = batch[m.target].to(trainer.device) * s_out if m.target else x
            out = m.sae(x)
            stats[m.name].update(y, out.x_hat, out.latents)
        seen += len(next(iter(batch.values())))
        if seen >= trainer.tcfg.eval_tokens:
            break
    for m in trainer.members:
        stats[m.name].all_reduce()
        r = stats[m.name].result()
        r["train_dead_pct"] = 100.0 * float(
            (m.tokens_since_fired >= trainer.tcfg.dead_tokens).double().mean()
        )
        r["eval_source"] = where
        results[m.name] = r
    return results
