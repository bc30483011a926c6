"""The SAEs of one training run: one per sweep item, each with its optimizer and counters,
plus the run's schedule and epoch length (the setup `sae/train.py`'s loop works on)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from sae.activations.sources import ActivationSource, LiveSource
from sae.config import ConfigError, TrainConfig
from sae.sae import SAE


class Member:
    """One SAE of the run with its optimizer and dead-latent counter."""

    def __init__(
        self, name: str, cfg, hook: str, target: str | None, lr: float, tcfg: TrainConfig, device
    ):
        self.name, self.hook, self.target, self.lr = name, hook, target, lr
        self.sae = SAE(cfg, device=device)
        self.opt = torch.optim.Adam(
            self.sae.parameters(), lr=lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2)
        )
        self.tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.last: dict[str, float] = {}


def build_members(tcfg: TrainConfig, source: ActivationSource, device) -> list[Member]:
    members = []
    for i, overrides in enumerate(tcfg.sweep_items()):
        default_hook = source.hooks[0] if len(source.hooks) == 1 else tcfg.model.hooks[0]
        hook = overrides.pop("hook", tcfg.hook or default_hook)
        target = overrides.pop("target_hook", tcfg.target_hook)
        lr = overrides.pop("lr", tcfg.lr)
        for h in [hook] + ([target] if target else []):
            if h not in source.d:
                raise ConfigError(
                    f"hook {h!r} is not served by the activation source; it serves {source.hooks}."
                )
        d_in = source.d[hook]
        if tcfg.sae.d_in is not None and tcfg.sae.d_in != d_in:
            raise ConfigError(
                f"sae.d_in={tcfg.sae.d_in} but the activations at {hook!r} have width {d_in}."
            )
        try:
            cfg = dataclasses.replace(
                tcfg.sae, **overrides, d_in=d_in, d_out=source.d[target] if target else None
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"sweep item {i} ({tcfg.sweep[i] if tcfg.sweep else 'base'}): {e}"
            ) from None
        if cfg.architecture == "gated":
            raise ConfigError(
                "sae.architecture='gated' can be loaded but not trained; choose relu, topk, batchtopk, jumprelu or matryoshka."
            )
        # Gao et al. 2024 §A: the best LR falls as 1/sqrt(number of latents); the constant was
        # tuned on MiniLM layer 3 at batch 1024 (BENCHMARKS.md, 'choosing the defaults').
        lr = lr if lr is not None else 1.2e-3 / math.sqrt(cfg.d_sae / 2**14)
        name = f"{hook}{'->' + target if target else ''}-{cfg.architecture}-{cfg.d_sae}"
        name += f"-k{cfg.k}" if cfg.architecture in ("topk", "batchtopk", "matryoshka") else ""
        name = name if len(tcfg.sweep_items()) == 1 else f"{i:02d}-{name}"
        members.append(Member(name.replace("/", "_"), cfg, hook, target, lr, tcfg, device))
    return members


def schedule(step: int, total_steps: int, tcfg: TrainConfig) -> tuple[float, float]:
    """(LR multiplier, sparsity-coefficient multiplier) at `step`: linear warm-up, linear decay."""
    warm = max(1, round(tcfg.lr_warmup * total_steps))
    decay_start = total_steps - round(tcfg.lr_decay * total_steps)
    lr = min(1.0, (step + 1) / warm)
    if step >= decay_start and tcfg.lr_decay > 0:
        lr *= max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
    sparsity = min(1.0, (step + 1) / max(1, round(tcfg.sparsity_warmup * total_steps)))
    return lr, sparsity


def rows_per_epoch(source: ActivationSource, tcfg: TrainConfig) -> int:
    """Rows this rank sees in one pass, to size the LR schedule of a one-pass run."""
    if isinstance(source, LiveSource):
        if tcfg.data.source != "builtin" and not Path(tcfg.data.source).exists():
            raise ConfigError(
                f"data.source={tcfg.data.source!r} is streamed from the Hub; set total_tokens "
                "(the length of one pass cannot be known in advance)."
            )
        return source.count_rows()
    return source.rank_rows()
