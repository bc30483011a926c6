"""The SAEs of one training run: one per sweep item, each with its optimizer and counters,
plus the run's schedule and epoch length (the setup `sae/training/train.py`'s loop works on)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from sae import dist
from sae.activations.capture import model_metadata
from sae.activations.sources import ActivationSource
from sae.config import ConfigError
from sae.config.schema import (
    ADAM_BETAS,
    LR_DECAY,
    LR_WARMUP,
    MAX_NONFINITE_STEPS,
    SPARSITY_WARMUP,
    TrainConfig,
)
from sae.io import save as save_sae
from sae.model.sae import SAE, SAEConfig
from sae.model.step import THRESHOLD_EMA, Batch, TrainOutput, training_forward
from sae.training.checkpoint import load_optimizer_tensors, optimizer_tensors
from sae.training.scale import ActivationScale


class Member:
    """One SAE of the run with its loss, optimizer and dead-latent counter."""

    def __init__(
        self,
        name: str,
        cfg: SAEConfig,
        hook: str,
        target: str | None,
        lr: float,
        device: torch.device | str,
        threshold_rate: float = THRESHOLD_EMA,
        compile: bool = False,
    ):
        """`name` names its folder; it reads `hook` and reconstructs `target` (None: `hook`
        itself); Adam at `lr`; the BatchTopK threshold moves at `threshold_rate` per step;
        `compile`: the loss through torch.compile."""
        self.name, self.hook, self.target, self.lr = name, hook, target, lr
        self.threshold_rate = threshold_rate
        self.sae = SAE(cfg, device=device)
        if compile:  # one compiled graph per SAE (its own weights and shapes)
            self.loss = torch.compile(self.loss)
        # The fused kernel updates all moments in one pass per parameter (CPU and CUDA).
        fused = torch.device(device).type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr, betas=ADAM_BETAS, fused=fused)
        self.tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        # Non-finite losses, counted on the device and read at the log cadence (`check_finite`):
        # steps skipped, the current run of them, and the longest run.
        self.skipped, self.in_a_row, self.longest = (
            torch.zeros((), dtype=torch.long, device=device) for _ in range(3)
        )
        self.last_tensors: dict[str, torch.Tensor] = {}

    def batch(self, acts: dict[str, torch.Tensor]) -> Batch:
        """This SAE's input and target among the run's activations (hook -> rows)."""
        return Batch(acts[self.hook], acts[self.target] if self.target else None)

    def loss(self, batch: Batch, dead_S: torch.Tensor, sparsity: float) -> TrainOutput:
        """The step's loss and its terms (`training_forward`); `dead_S` marks the latents AuxK
        revives, `sparsity` the sparsity coefficient's warm-up multiplier."""
        return training_forward(self.sae, batch.x, batch.y, dead_S, sparsity, self.threshold_rate)

    @property
    def skipped_steps(self) -> int:
        return int(self.skipped)

    def optimizer_step(self, ok: torch.Tensor) -> None:
        """Adam's update where `ok` (the loss was finite on every rank), none otherwise: the
        gradient is dropped and the weights and moments stay as they were. The fused kernel
        reads the decision on the device (`found_inf`, as GradScaler passes it), so the host
        never waits for the loss; other optimizers ask the host."""
        bad = ~ok
        self.skipped += bad
        self.in_a_row.add_(1).mul_(bad)  # one more after a non-finite loss, 0 after a finite one
        torch.maximum(self.longest, self.in_a_row, out=self.longest)
        if self.opt.defaults.get("fused"):
            self.opt.found_inf = bad.float()
            self.opt.step()
        elif bool(ok):
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def check_finite(self, step: int, run: Path) -> None:
        """Stop the run once the non-finite losses have come MAX_NONFINITE_STEPS + 1 in a row
        (read at the log cadence: until then the skipped steps changed nothing)."""
        longest = int(self.longest)
        if longest > MAX_NONFINITE_STEPS:
            raise RuntimeError(
                f"{self.name}: {longest} non-finite losses in a row by step {step} (at most "
                f"{MAX_NONFINITE_STEPS} are skipped); stopped. The last good checkpoint is in {run}."
            )

    @torch.no_grad()
    def after_step(self, out: TrainOutput, dead_S: torch.Tensor, ok: torch.Tensor) -> None:
        """Update the dead-latent counter (a latent lives if it fired on any rank; the count is of
        all ranks' rows; a skipped step `ok` False counts nothing), agree on the BatchTopK
        threshold, and set the next log line's figures."""
        fired_S = dist.any_rank(out.fired()) & ok  # from the sparse codes: no dense [B, d_sae]
        self.tokens_since_fired += ok * (len(out.x_hat) * dist.world_size())  # all ranks' rows
        self.tokens_since_fired.masked_fill_(fired_S, 0)  # (indexing by the mask would sync)
        if self.sae.cfg.architecture in ("batchtopk", "matryoshka"):
            # Each rank moved its threshold estimate by its own rows; the mean over ranks is the
            # same EMA over all ranks' batch minima (it is linear), so replicas stay equal.
            self.sae.threshold.copy_(dist.all_reduce_mean(self.sae.threshold))
        # Kept as tensors until a log line reads them (`last`): reading them here would make a
        # GPU finish the step before the next one is queued, every step.
        self.last_tensors = {
            "loss": out.loss.detach(),
            "fvu": out.mse.detach(),
            "l0": out.l0(),
            "dead_pct": 100.0 * dead_S.float().mean(),
        }

    @property
    def last(self) -> dict[str, float]:
        """The last step's loss, FVU, L0 and dead % for the log line (read at the log cadence)."""
        return {k: v.item() for k, v in self.last_tensors.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything resume needs: training-space weights, Adam state, dead-latent counter."""
        out = {f"train.{k}": v for k, v in self.sae.state_dict().items()}
        out |= optimizer_tensors(self.opt)
        out["dead.tokens_since_fired"] = self.tokens_since_fired
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor], skipped_steps: int) -> None:
        """Inverse of `tensors` (a checkpoint's trainer_state.safetensors)."""
        self.sae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("train.")})
        load_optimizer_tensors(self.opt, tensors)
        self.tokens_since_fired.copy_(tensors["dead.tokens_since_fired"])
        self.skipped.fill_(skipped_steps)

    def save(self, folder: Path, scale: ActivationScale, meta: dict, sparsity=None) -> None:
        """Write the SAE as a SAELens folder with the training scale folded in, so it maps raw
        activations to raw reconstructions; `meta` gives the run's facts."""
        export = SAE(self.sae.cfg, device="cpu")
        export.load_state_dict({k: v.detach().cpu() for k, v in self.sae.state_dict().items()})
        meta = {"hook_name": self.hook, "target_hook_name": self.target} | meta
        meta["normalization_folded"] = scale.fold(export, self.hook, self.target)
        save_sae(export, folder, metadata=meta, sparsity_log10=sparsity)


def default_lr(d_sae: int, batch_tokens: int) -> float:
    """Adam LR when none is given: 1.2e-3 * sqrt(batch / 1024) / sqrt(d_sae / 2^14).

    Gao et al. 2024 §A: the best LR falls as 1/sqrt(number of latents). The batch factor is
    Adam's square-root rule (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms"): a batch s times larger takes s times fewer steps over the same
    tokens, and sqrt(s) times the LR keeps the update noise per token equal. The constant was
    tuned on MiniLM layer 3 at batch 1024, and the batch factor checked at 1024 and 4096
    (BENCHMARKS.md, 'Training defaults: the measurements behind them')."""
    return 1.2e-3 * math.sqrt(batch_tokens / 1024) / math.sqrt(d_sae / 2**14)


DEAD_WINDOW_FRACTION = 1 / 100
"""The default dead window as a fraction of the run. A fixed window of 250k tokens left half of
a 500k-token run's dead latents without AuxK's gradient; a 100th of the run revives them in
time, where a 25th or a 50th left several times the held-out dead latents in the built-in run at
equal FVU (BENCHMARKS.md, 'Training defaults: the measurements behind them')."""
DEAD_WINDOW_MAX = 10_000_000
"""Gao et al. 2024 (§A.2) call a latent dead after 10M tokens without firing."""


def dead_window(tcfg: TrainConfig, run_tokens: int) -> int:
    """Tokens without firing after which a latent counts as dead: `dead_tokens`, or by default
    a 100th of the run's `run_tokens`, at least one (all-rank) batch and at most 10M."""
    if tcfg.dead_tokens is not None:
        return tcfg.dead_tokens
    batch = tcfg.store.batch_size * dist.world_size()
    return int(min(DEAD_WINDOW_MAX, max(batch, run_tokens * DEAD_WINDOW_FRACTION)))


def build_members(
    tcfg: TrainConfig, source: ActivationSource, device, total_steps: int
) -> list[Member]:
    """One `Member` per sweep item (the base config alone without a sweep), checked against
    the hooks and widths `source` serves."""
    members = []
    rate = threshold_rate(total_steps)
    world = dist.world_size()
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
        lr = lr if lr is not None else default_lr(cfg.d_sae, tcfg.store.batch_size * world)
        name = f"{hook}{'->' + target if target else ''}-{cfg.architecture}-{cfg.d_sae}"
        name += f"-k{cfg.k}" if cfg.architecture in ("topk", "batchtopk", "matryoshka") else ""
        name = name if len(tcfg.sweep_items()) == 1 else f"{i:02d}-{name}"
        name = name.replace("/", "_")
        members.append(Member(name, cfg, hook, target, lr, device, rate, tcfg.compile))
    return members


def threshold_rate(total_steps: int) -> float:
    """Per-step EMA rate of the BatchTopK/Matryoshka inference threshold: SAELens's 0.01, or
    faster in a short run, so that its time constant is at most the LR-decay phase (the last
    LR_DECAY of the steps) and the estimate describes the final weights. At 0.01 a 122-step run
    still carried much of its untrained first batch's threshold, and held-out L0 came out well
    below k (BENCHMARKS.md, 'Training defaults: the measurements behind them')."""
    return max(THRESHOLD_EMA, 1.0 / max(1.0, LR_DECAY * total_steps))


def schedule(step: int, total_steps: int) -> tuple[float, float]:
    """(LR multiplier, sparsity-coefficient multiplier) at `step`: linear warm-up over LR_WARMUP
    of the steps, linear decay to zero over the last LR_DECAY, sparsity ramp over
    SPARSITY_WARMUP."""
    warm = max(1, round(LR_WARMUP * total_steps))
    decay_start = total_steps - round(LR_DECAY * total_steps)
    lr = min(1.0, (step + 1) / warm)
    if step >= decay_start:
        lr *= max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
    sparsity = min(1.0, (step + 1) / max(1, round(SPARSITY_WARMUP * total_steps)))
    return lr, sparsity


def run_metadata(tcfg: TrainConfig, tokens: int) -> dict:
    """Facts about the run saved in every SAE folder's cfg.json."""
    meta = {
        "model_name": tcfg.model.name,
        **model_metadata(tcfg.model),  # revision, dtype, trust_remote_code: how to reload it
        "context_size": tcfg.data.context_size,
        "tokens_trained": tokens,
        "autocast": tcfg.autocast,  # bf16 autocast of the SAE step, as resolved for the run
        "exclude_bos": tcfg.store.exclude_bos,
        "exclude_special": tcfg.store.exclude_special,
        "data": dataclasses.asdict(tcfg.data),
    }
    if tcfg.activations == "synthetic":  # the eval suite regenerates the true dictionary
        meta["synthetic"] = dataclasses.asdict(tcfg.synthetic)
        meta["model_name"] = meta["hook_name"] = "synthetic"
    return meta
