"""What a run reports while it trains: metrics.jsonl, Weights & Biases, the progress bar, and
the closing table of held-out scores. Only rank 0 writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from sae import dist
from sae.config.parse import to_dict
from sae.config.schema import TrainConfig
from sae.fsutil import open_append
from sae.training.members import Member


class RunLog:
    """One record per `log_every` steps. metrics.jsonl is an append-mode log in the run folder
    (opened through sae/fsutil.py's ownership check), not an atomic write: each line is flushed whole, a resumed run continues the same file, and a line torn
    by a crash is the only loss (fsutil's write-then-rename would rewrite the file each time)."""

    def __init__(self, tcfg: TrainConfig, total_tokens: int, tokens: int):
        main = dist.is_main()
        self.metrics = open_append(Path(tcfg.out) / "metrics.jsonl", "run") if main else None
        self.wandb = None
        if tcfg.wandb != "disabled" and main:
            import wandb  # optional dependency, loaded only when asked for

            self.wandb = wandb.init(
                project=tcfg.wandb_project, mode=tcfg.wandb, config=to_dict(tcfg), dir=tcfg.out
            )
        self.bar = tqdm(
            total=total_tokens,
            initial=tokens,
            unit="tok",
            unit_scale=True,
            disable=tcfg.quiet or not main,
            desc="train",
        )
        self.t0, self.tokens0 = time.perf_counter(), tokens

    def filling(self, on: bool, what: str = "reading activations") -> None:
        """Say in the bar what a pause is (`what`, e.g. the model running) while the store
        fills its shuffle buffer; back to "train" when the batches flow again."""
        self.bar.set_description_str(f"train ({what} into the shuffle buffer)" if on else "train")

    def progress(self, tokens: int) -> None:
        self.bar.update(tokens - self.bar.n)

    def write(self, step: int, tokens: int, members: list[Member]) -> None:
        rate = (tokens - self.tokens0) / (time.perf_counter() - self.t0)
        record = {"step": step, "tokens": tokens, "tokens_per_s": round(rate, 1)}
        lasts = [m.last for m in members]  # the step's figures leave the device here only
        for m, last in zip(members, lasts, strict=True):
            record |= {f"{m.name}/{k}": round(v, 6) for k, v in last.items()}
        if len(members) == 1:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in lasts[0].items()})
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        self.bar.close()
        if self.metrics:
            self.metrics.close()

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def print_summary(results: dict[str, dict], members: list[Member]) -> None:
    """The held-out table printed at the end of `sae train`."""
    print(f"\n{'sae':40s} {'held-out FVU':>12s} {'L0':>7s} {'dead %':>7s} {'skipped':>7s}")
    for m in members:
        r = results[m.name]
        print(
            f"{m.name:40s} {r['fvu']:12.4f} {r['l0']:7.1f} {r['dead_pct']:7.2f} {m.skipped_steps:7d}"
        )
    first = results[members[0].name]
    print(f"({first['eval_tokens']} held-out tokens from {first['eval_source']})")
