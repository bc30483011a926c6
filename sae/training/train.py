"""`sae train`: train one or more SAEs from one activation stream.

    sae train                                            # built-in default: MiniLM resid_post.3, TopK
    sae train configs/minilm_topk.yaml --sae.k 64 --out checkpoints/k64
    sae train --activations acts.npy --eval-activations heldout.npy
    sae train configs/sweep.yaml --sweep k=16 k=32 k=64    # three SAEs, one harvest
    sae train --out checkpoints/k64 --resume             # continue an interrupted run
    sae train --model.device cuda --autocast --compile   # GPU: bf16 autocast, torch.compile
    torchrun --nproc_per_node 2 -m sae train configs/minilm_topk.yaml   # data-parallel (DDP)

The loop: set LR and sparsity warm-up -> maybe checkpoint -> step every SAE -> log. The store
normalises activations to unit mean squared norm; the scale is folded into the saved weights,
so a saved SAE maps raw activations to raw reconstructions. The last line printed is the final
SAE folder.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sae import dist
from sae.activations.capture import resolve_device
from sae.activations.sources import CacheSource, SyntheticSource, open_source
from sae.activations.store import ActivationStore
from sae.config import ConfigError, TrainConfig, save_yaml, to_dict
from sae.fsutil import atomic_write_text
from sae.io import save as save_sae
from sae.sae import SAE
from sae.training.checkpoint import (
    latest_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    read_checkpoint,
    write_checkpoint,
)
from sae.training.members import Member, build_members, rows_per_epoch, schedule


class Trainer:
    def __init__(self, tcfg: TrainConfig):
        self.tcfg = tcfg
        self.device = resolve_device(tcfg.model.device)
        self.run = Path(tcfg.out)
        self._check_run_folder()
        hooks = tcfg.hooks_needed()
        model_cfg = dataclasses.replace(tcfg.model, hooks=hooks) if hooks else tcfg.model
        if tcfg.activations == "synthetic":
            self.source = SyntheticSource(
                tcfg.synthetic, tcfg.total_tokens, False, dist.rank(), dist.world_size()
            )
        else:
            self.source = open_source(
                tcfg.activations, model_cfg, tcfg.data, tcfg.store, dist.rank(), dist.world_size()
            )
        if isinstance(self.source, CacheSource):
            self.source.check_matches(tcfg.model.name, tcfg.hooks_needed())
        torch.manual_seed(tcfg.seed)
        self.members = build_members(tcfg, self.source, self.device)
        self._forward = {
            m.name: torch.compile(m.sae.training_forward)
            if tcfg.compile
            else m.sae.training_forward
            for m in self.members
        }
        B, world = tcfg.store.batch_size, dist.world_size()
        if tcfg.total_tokens is not None:
            self.total_steps = max(1, tcfg.total_tokens // (B * world))
        else:
            steps = rows_per_epoch(self.source, tcfg) * tcfg.epochs // B
            # Ranks may hold a few rows more or less: all stop at the smallest count.
            self.total_steps = max(1, int(dist.all_reduce(torch.tensor(steps), "min")))
        self.step, self.tokens, self.epoch = 0, 0, 0
        self.scale: dict[str, float] | None = None
        self.store_state: dict | None = None
        self._stop_signal: int | None = None
        if tcfg.resume:
            self._resume()
        dist.barrier()  # every rank has checked the run folder before rank 0 writes into it

    # -- run folder, resume -----------------------------------------------------------------
    def _check_run_folder(self) -> None:
        saved = self.run / "config.yaml"
        if self.tcfg.resume:
            if latest_checkpoint(self.run) is None:
                raise ConfigError(
                    f"--resume: {str(self.run)!r} holds no checkpoint to resume from."
                )
            import yaml

            old = yaml.safe_load(saved.read_text())
            new = to_dict(self.tcfg)
            diff = sorted(
                k for k in new if k not in TrainConfig.RESUME_FREE and old.get(k) != new[k]
            )
            if diff:
                raise ConfigError(
                    f"--resume: the run in {str(self.run)!r} was made with a different config "
                    f"(differs in {diff})."
                )
        elif saved.exists():
            raise ConfigError(
                f"out={str(self.run)!r} already holds a run; pass --resume to continue it or "
                "choose another --out."
            )

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run)
        state = read_checkpoint(ckpt, [m.name for m in self.members])
        t = state["trainer"]
        self.step, self.tokens, self.epoch = t["step"], t["tokens"], t["epoch"]
        self.scale = t["scale"]
        states = state["store_state"]["ranks"]
        if len(states) != dist.world_size():
            raise ConfigError(
                f"--resume: the checkpoint was written by {len(states)} processes, this run has "
                f"{dist.world_size()}."
            )
        self.store_state = states[dist.rank()]
        for m in self.members:
            tensors = state["saes"][m.name]
            m.sae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("train.")})
            load_optimizer_tensors(m.opt, tensors)
            m.tokens_since_fired.copy_(tensors["dead.tokens_since_fired"])
            m.skipped_steps = t["skipped"][m.name]
        dist.print0(f"resumed from {ckpt} at step {self.step} ({self.tokens} tokens)")

    # -- helpers ----------------------------------------------------------------------------
    def _store(self) -> ActivationStore:
        # The trainer applies the normalisation itself (self.scale), so it is one factor for
        # all ranks and epochs, saved with the trainer state.
        cfg = dataclasses.replace(
            self.tcfg.store, seed=self.tcfg.store.seed + self.epoch, normalize=False
        )
        return ActivationStore(self.source, cfg, self.store_state)

    def _init_from_data(self, batch: dict[str, torch.Tensor]) -> None:
        for m in self.members:
            x = batch[m.hook].to(self.device)
            y = batch[m.target].to(self.device) if m.target else None
            m.sae.init_from_data(x, y, method=self.tcfg.b_dec_init)
            for t in m.sae.state_dict().values():  # replicas start equal, as under DDP
                dist.broadcast_(t)

    def _scales(self, m: Member) -> tuple[float, float]:
        """(input, target) scale the SAE was trained at: 1 unless store.normalize."""
        f = self.scale or {}
        s_in = f.get(m.hook, 1.0)
        return s_in, f.get(m.target, 1.0) if m.target else s_in

    def _set_scale(self, store: ActivationStore) -> None:
        """Unit mean squared norm, from rank 0's first chunk, identical on every rank."""
        if not self.tcfg.store.normalize:
            self.scale = {}
            return
        hooks = sorted(store.norm_factor)
        t = dist.broadcast_(
            torch.tensor([store.norm_factor[h] for h in hooks], dtype=torch.float64)
        )
        self.scale = dict(zip(hooks, t.tolist(), strict=True))

    def _save_sae(self, m: Member, folder: Path, sparsity=None) -> None:
        """Write the SAE with the training normalisation folded in (raw activations in and out)."""
        export = SAE(m.sae.cfg, device="cpu")
        export.load_state_dict({k: v.detach().cpu() for k, v in m.sae.state_dict().items()})
        s_in, s_out = self._scales(m)
        export.fold_input_scale(s_in, s_out)
        meta = {
            "model_name": self.tcfg.model.name,
            "hook_name": m.hook,
            "target_hook_name": m.target,
            "context_size": self.tcfg.data.context_size,
            "normalization_folded": {"input_scale": s_in, "target_scale": s_out},
            "tokens_trained": self.tokens,
            "exclude_bos": self.tcfg.store.exclude_bos,
            "exclude_special": self.tcfg.store.exclude_special,
            "data": dataclasses.asdict(self.tcfg.data),
        }
        if self.tcfg.activations == "synthetic":  # the eval suite regenerates the true dictionary
            meta["synthetic"] = dataclasses.asdict(self.tcfg.synthetic)
            meta["model_name"] = meta["hook_name"] = "synthetic"
        save_sae(export, folder, metadata=meta, sparsity_log10=sparsity)

    def checkpoint(self, store: ActivationStore) -> Path | None:
        store_states = dist.all_gather_object(store.state_dict())  # every rank takes part
        if not dist.is_main():
            return None
        saes = {}
        for m in self.members:
            tensors = {f"train.{k}": v for k, v in m.sae.state_dict().items()}
            tensors |= optimizer_tensors(m.opt)
            tensors["dead.tokens_since_fired"] = m.tokens_since_fired
            saes[m.name] = (lambda folder, m=m: self._save_sae(m, folder), tensors)
        trainer = {
            "step": self.step,
            "tokens": self.tokens,
            "epoch": self.epoch,
            "scale": self.scale,
            "skipped": {m.name: m.skipped_steps for m in self.members},
        }
        return write_checkpoint(
            self.run,
            self.tokens,
            {"store_state": {"ranks": store_states}, "trainer": trainer, "saes": saes},
            keep=self.tcfg.keep_checkpoints,
        )

    # -- one optimisation step --------------------------------------------------------------
    def _step(
        self, m: Member, batch: dict[str, torch.Tensor], lr_mult: float, sparsity: float
    ) -> None:
        x = batch[m.hook].to(self.device, non_blocking=True)
        y = batch[m.target].to(self.device, non_blocking=True) if m.target else None
        for group in m.opt.param_groups:
            group["lr"] = m.lr * lr_mult
        dead = m.tokens_since_fired >= self.tcfg.dead_tokens
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tcfg.autocast):
            out = self._forward[m.name](x, y, dead, sparsity)
        finite = torch.isfinite(out.loss.detach())
        if dist.is_distributed():  # all ranks skip together, or the gradient all-reduce hangs
            finite = dist.all_reduce(finite.to(torch.int32), "min").bool()
        if not finite:
            # Skip and count; the caller stops the run if this keeps happening.
            m.opt.zero_grad(set_to_none=True)
            m.nonfinite_in_a_row += 1
            m.skipped_steps += 1
            return
        m.nonfinite_in_a_row = 0
        out.loss.backward()
        if dist.is_distributed():  # data parallel: average gradients over ranks, as DDP does
            for p in m.sae.parameters():
                if p.grad is not None:
                    p.grad.copy_(dist.all_reduce_mean(p.grad))
        if m.sae.cfg.architecture != "relu":
            m.sae.remove_parallel_decoder_grad()
        if self.tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(m.sae.parameters(), self.tcfg.grad_clip)
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        if m.sae.cfg.architecture != "relu":
            # ReLU keeps a free decoder norm and pays it in the L1 term (Anthropic, April 2024).
            m.sae.set_decoder_unit_norm()
        with torch.no_grad():
            fired = (out.latents != 0).any(0)
            if dist.is_distributed():
                fired = dist.all_reduce(fired.to(torch.int32), "max").bool()
            m.tokens_since_fired += len(x)
            m.tokens_since_fired[fired] = 0
            m.last = {
                "loss": out.loss.item(),
                "fvu": out.mse.item(),
                "l0": (out.latents != 0).sum(-1).float().mean().item(),
                "dead_pct": 100.0 * dead.float().mean().item(),
            }

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> list[Path]:
        tcfg = self.tcfg
        if dist.is_main():
            self.run.mkdir(parents=True, exist_ok=True)
            save_yaml(tcfg, self.run / "config.yaml")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, f: setattr(self, "_stop_signal", s))
        metrics = open(self.run / "metrics.jsonl", "a") if dist.is_main() else None
        wandb_run = _wandb(tcfg)
        bar = tqdm(
            total=self.total_steps * tcfg.store.batch_size,
            initial=self.tokens,
            unit="tok",
            unit_scale=True,
            disable=tcfg.quiet or not dist.is_main(),
            desc="train",
        )
        next_ckpt = (
            (self.tokens // tcfg.checkpoint_every + 1) * tcfg.checkpoint_every
            if tcfg.checkpoint_every
            else None
        )
        t0, tokens0 = time.perf_counter(), self.tokens
        store = self._store()
        while self.step < self.total_steps and self._stop_signal is None:
            stream = iter(store)
            for batch in stream:
                if self.scale is None:
                    self._set_scale(store)
                batch = {h: x * self.scale.get(h, 1.0) for h, x in batch.items()}
                if self.step == 0 and self.store_state is None:
                    self._init_from_data(batch)
                lr_mult, sparsity = schedule(self.step, self.total_steps, tcfg)
                for m in self.members:
                    self._step(m, batch, lr_mult, sparsity)
                    if m.nonfinite_in_a_row > tcfg.max_nonfinite_steps:
                        raise RuntimeError(
                            f"{m.name}: {m.nonfinite_in_a_row} non-finite losses in a row at step "
                            f"{self.step}; stopped. The last good checkpoint is in {self.run}."
                        )
                self.step += 1
                self.tokens += len(next(iter(batch.values()))) * dist.world_size()
                bar.update(self.tokens - bar.n)
                if self.step % tcfg.log_every == 0 or self.step == self.total_steps:
                    rate = (self.tokens - tokens0) / (time.perf_counter() - t0)
                    self._log(metrics, wandb_run, bar, rate)
                if dist.is_distributed():  # a signal reaches ranks at different steps: agree
                    flag = torch.tensor(0 if self._stop_signal is None else self._stop_signal)
                    flag = int(dist.all_reduce(flag, "max"))
                    self._stop_signal = flag or None
                if next_ckpt is not None and self.tokens >= next_ckpt:
                    self.checkpoint(store)
                    next_ckpt += tcfg.checkpoint_every
                if self.step >= self.total_steps or self._stop_signal is not None:
                    break
            else:  # the stream ran dry: next epoch, reshuffled
                self.epoch += 1
                self.store_state = None
                store = self._store()
                if tcfg.total_tokens is None and self.epoch >= tcfg.epochs:
                    break
        bar.close()
        self.checkpoint(store)
        if metrics:
            metrics.close()
        if self._stop_signal is not None:
            dist.print0(
                f"stopped by signal {self._stop_signal}; resume with --resume --out {self.run}"
            )
            return []
        return self._finish(wandb_run)

    def _log(self, metrics, wandb_run, bar, rate: float) -> None:
        record = {"step": self.step, "tokens": self.tokens, "tokens_per_s": round(rate, 1)}
        for m in self.members:
            record |= {f"{m.name}/{k}": round(v, 6) for k, v in m.last.items()}
        if len(self.members) == 1:
            bar.set_postfix({k: f"{v:.4g}" for k, v in self.members[0].last.items()})
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if wandb_run is not None:
            wandb_run.log(record, step=self.step)

    def _finish(self, wandb_run) -> list[Path]:
        from sae.training.heldout import evaluate_members

        results = evaluate_members(self)
        finals = [self.run / "final" / m.name for m in self.members]
        if dist.is_main():
            for m, folder in zip(self.members, finals, strict=True):
                density = results[m.name].pop("log10_density", None)
                self._save_sae(m, folder, sparsity=density)
                summary = json.dumps(results[m.name], indent=2) + "\n"
                atomic_write_text(folder / "train_summary.json", summary)
            _print_summary(results, self)
        dist.barrier()  # no rank leaves before the final folders exist
        if wandb_run is not None:
            wandb_run.finish()
        return finals


def _wandb(tcfg: TrainConfig):
    if tcfg.wandb == "disabled" or not dist.is_main():
        return None
    import wandb

    return wandb.init(
        project=tcfg.wandb_project, mode=tcfg.wandb, config=to_dict(tcfg), dir=tcfg.out
    )


def _print_summary(results: dict, trainer: Trainer) -> None:
    print(f"\n{'sae':40s} {'held-out FVU':>12s} {'L0':>7s} {'dead %':>7s} {'skipped':>7s}")
    for m in trainer.members:
        r = results[m.name]
        print(
            f"{m.name:40s} {r['fvu']:12.4f} {r['l0']:7.1f} {r['dead_pct']:7.2f} {m.skipped_steps:7d}"
        )
    print(
        f"({results[trainer.members[0].name]['eval_tokens']} held-out tokens from {results[trainer.members[0].name]['eval_source']})"
    )


def train(tcfg: TrainConfig) -> list[Path]:
    return Trainer(tcfg).fit()
