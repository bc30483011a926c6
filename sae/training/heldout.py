"""Held-out scoring at the end of training: FVU, L0, dead latents, firing density.

FVU here is the fraction of variance unexplained: the summed squared error over the summed
squared deviation of the target from its mean over the held-out tokens (variance about the mean,
summed over dimensions), accumulated in float64. The `sae eval` suites build on these sums.
"""

from __future__ import annotations

import torch

from sae import dist
from sae.activations.sources import ActivationSource, SyntheticSource, open_source
from sae.activations.store import ActivationStore
from sae.config.schema import StoreConfig, TrainConfig
from sae.model.sae import SparseCodes
from sae.training.members import Member
from sae.training.scale import ActivationScale


class ReconstructionStats:
    """Streaming sums for FVU, L0 and per-latent firing counts."""

    def __init__(self, d_out: int, d_sae: int, device):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)
        self.n, self.sq_err, self.sum_y, self.sum_y2 = 0, z(()), z(d_out), z(d_out)
        self.l0_sum, self.fired = z(()), z(d_sae)

    @torch.no_grad()
    def update(self, y: torch.Tensor, y_hat: torch.Tensor, codes: SparseCodes) -> None:
        y64 = y.double()
        self.n += len(y)
        self.sq_err += (y64 - y_hat.double()).pow(2).sum()
        self.sum_y += y64.sum(0)
        self.sum_y2 += y64.pow(2).sum(0)
        active = codes.top_acts != 0
        self.l0_sum += active.sum()
        self.fired.index_add_(0, codes.top_indices[active], active[active].double())

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


def heldout_store(tcfg: TrainConfig, train_source: ActivationSource) -> tuple[ActivationStore, str]:
    """The held-out activations of a run and where they come from: synthetic samples with
    disjoint indices, `eval_activations`, or a live run's held-out windows; failing those, the
    training stream itself (said so in the summary)."""
    cfg = StoreConfig(
        buffer_tokens=max(2 * tcfg.store.batch_size, 8192),
        batch_size=tcfg.store.batch_size,
        exclude_bos=tcfg.store.exclude_bos,
        exclude_special=tcfg.store.exclude_special,
        skip_nonfinite=tcfg.store.skip_nonfinite,
    )
    rank, world = dist.rank(), dist.world_size()
    if tcfg.activations == "synthetic":
        src = SyntheticSource(tcfg.synthetic, tcfg.eval_tokens, held_out=True)
        return ActivationStore(src, cfg), "held-out synthetic samples (disjoint generator indices)"
    if tcfg.eval_activations is not None:
        src = open_source(tcfg.eval_activations, tcfg.model, tcfg.data, cfg, rank, world)
        return ActivationStore(src, cfg), tcfg.eval_activations
    held_out = train_source.held_out(cfg, rank, world) if tcfg.data.eval_every > 0 else None
    if held_out is not None:
        where = f"held-out windows (every {tcfg.data.eval_every}th) of {tcfg.data.source}"
        return ActivationStore(held_out, cfg), where
    dist.print0("no held-out data (give --eval-activations); scores below are on training batches")
    return ActivationStore(train_source, tcfg.store), "training stream (not held out)"


@torch.no_grad()
def score_members(
    members: list[Member],
    store: ActivationStore,
    where: str,
    scale: ActivationScale,
    eval_tokens: int,
    dead_tokens: int,
    device: torch.device,
) -> dict[str, dict]:
    """Score every SAE on `eval_tokens` rows of `store`, scaled as in training; the training
    dead % comes from the members' counters."""
    stats = {
        m.name: ReconstructionStats(m.sae.cfg.width_out, m.sae.cfg.d_sae, device) for m in members
    }
    seen = 0
    hooks = sorted({h for m in members for h in (m.hook, m.target) if h})
    for acts in store:
        acts = scale.apply({h: acts[h].to(device) for h in hooks})
        for m in members:
            x, y = m.batch(acts)
            out = m.sae.forward_sparse(x)  # no dense [B, d_sae] latents on the TopK path
            stats[m.name].update(x if y is None else y, out.x_hat, out.codes)
        seen += len(acts[hooks[0]])
        if seen >= eval_tokens:
            break
    results = {}
    for m in members:
        stats[m.name].all_reduce()
        r = stats[m.name].result()
        r["train_dead_pct"] = 100.0 * float((m.tokens_since_fired >= dead_tokens).double().mean())
        r["eval_source"] = where
        results[m.name] = r
    return results
