"""`sae train`: train one or more SAEs from one activation stream.

    sae train                                            # built-in default: MiniLM resid_post.3, TopK
    sae train configs/minilm_topk.yaml --sae.k 64 --out checkpoints/k64
    sae train --activations acts.npy --eval-activations heldout.npy
    sae train configs/sweep_k.yaml --sweep k=16 k=32 k=64  # three SAEs, one activation stream
    sae train --out checkpoints/k64 --resume             # continue an interrupted run
    sae train --model.device cuda --compile              # GPU: torch.compile (bf16 autocast: auto)
    torchrun --nproc_per_node 2 -m sae train configs/minilm_topk.yaml   # data-parallel (DDP)

The loop (`Trainer.fit`): next batch (`batches` owns epochs and reshuffling) -> LR and sparsity
warm-up -> step every SAE -> log -> maybe checkpoint -> stop at the end or on a signal. The
activations are scaled to unit mean squared norm (`ActivationScale`, estimated on the first
rows); the scale is folded into the saved weights, so a saved SAE maps raw activations to raw
reconstructions. The last line printed is the final SAE folder.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from sae import dist
from sae.activations.capture import resolve_device
from sae.activations.sources import SyntheticSource, open_source
from sae.activations.store import ActivationStore
from sae.config.parse import save_yaml
from sae.config.schema import (
    B_DEC_INIT,
    CHECKPOINT_SECONDS,
    DECODER_INIT,
    GRAD_CLIP,
    KEEP_CHECKPOINTS,
    TrainConfig,
)
from sae.fsutil import claim, clear_staging
from sae.io.records import TrainSummary
from sae.io.validate import NonFiniteRows
from sae.model.step import Batch
from sae.training.checkpoint import (
    CheckpointClock,
    check_run_folder,
    latest_checkpoint,
    rank_store_state,
    read_checkpoint,
    resolve_autocast,
    write_checkpoint,
)
from sae.training.heldout import heldout_store, score_members
from sae.training.malloc import keep_freed_memory
from sae.training.members import Member, build_members, dead_window, run_metadata, schedule
from sae.training.runlog import RunLog, print_summary
from sae.training.scale import ActivationScale

Acts = dict[str, torch.Tensor]
"""one batch of the run's activations: hook -> rows [B, d]."""

STREAM_CHECK_ENV = "SAE_STREAM_CHECK"
"""set to 1 (scripts/fault_campaign.py does), each checkpoint records `StreamCheck`'s figures."""


class StreamCheck:
    """The rows this rank has trained on and the sum of their first column: saved with each
    checkpoint, so a resumed run that lost or repeated a row ends with other figures than the
    uninterrupted one (the fault campaign compares them). Installed only under
    SAE_STREAM_CHECK=1: it reads every batch on the host."""

    def __init__(self, value: tuple[int, float] = (0, 0.0)):
        self.value = list(value)

    def watch(self, batches: Iterator[Acts]) -> Iterator[Acts]:
        """`batches`, counted as they pass."""
        for acts in batches:
            x_BD = next(iter(acts.values()))
            rows, total = self.value
            self.value = [rows + len(x_BD), total + float(x_BD[:, 0].double().sum())]
            yield acts


class Trainer:
    def __init__(self, tcfg: TrainConfig):
        """Setup: check the run folder, open the source, build the SAEs, size the schedule,
        and restore the latest checkpoint under --resume."""
        self.tcfg = tcfg = resolve_autocast(tcfg)
        keep_freed_memory()  # the CPU step reuses its freed tensors (sae/training/malloc.py)
        self.device = resolve_device(tcfg.model.device)
        self.run = Path(tcfg.out)
        check_run_folder(tcfg)
        hooks = tcfg.hooks_needed()
        model_cfg = dataclasses.replace(tcfg.model, hooks=hooks) if hooks else tcfg.model
        rank, world = dist.rank(), dist.world_size()
        if tcfg.activations == "synthetic":
            self.source = SyntheticSource(tcfg.synthetic, tcfg.total_tokens, False, rank, world)
        else:
            self.source = open_source(
                tcfg.activations, model_cfg, tcfg.data, tcfg.store, rank, world, passes=True
            )
        self.source.check_matches(tcfg.model.name, hooks)
        if tcfg.eval_activations is not None and tcfg.activations != "synthetic":
            # read only at the end: a bad file is refused now, before any output exists
            open_source(tcfg.eval_activations, model_cfg, tcfg.data, tcfg.store, rank, world)
        B = tcfg.store.batch_size
        if tcfg.total_tokens is not None:
            self.total_steps = max(1, tcfg.total_tokens // (B * world))
        else:
            steps = self.source.rank_rows() * tcfg.epochs // B
            self.total_steps = max(1, dist.min_over_ranks(steps))
        self.dead_tokens = dead_window(tcfg, self.total_steps * B * world)
        torch.manual_seed(tcfg.seed)
        self.members = build_members(tcfg, self.source, self.device, self.total_steps)
        self.hooks = sorted({h for m in self.members for h in (m.hook, m.target) if h})
        self.step, self.tokens, self.epoch = 0, 0, 0
        self.scale = ActivationScale(estimate=tcfg.store.normalize)
        self.check = StreamCheck() if os.environ.get(STREAM_CHECK_ENV) == "1" else None
        self.store_state: dict | None = None
        self._stop_signal: int | None = None
        self.on_fill = None  # set by fit(): the progress bar's note while the buffer fills
        if tcfg.resume:
            self._resume()
        self.store = self._store()
        dist.barrier()  # every rank has checked the run folder before rank 0 writes into it

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> list[Path]:
        """Train to the end (or a signal), checkpoint, then score and write final/<sae>/."""
        tcfg = self.tcfg
        if dist.is_main():
            claim(self.run, "run")
            # A run killed while writing its config, a checkpoint or a final SAE folder left
            # temporaries in the run's staging folder (never read); the run that continues it
            # deletes them, and nothing else.
            clear_staging(self.run, "run")
            save_yaml(tcfg, self.run / "config.yaml")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, f: setattr(self, "_stop_signal", s))
        log = RunLog(tcfg, self.total_steps * tcfg.store.batch_size, self.tokens)
        self.on_fill = lambda on: log.filling(
            on, f"running {tcfg.model.name}" if self.source.runs_model else "reading"
        )
        self.store.on_fill = self.on_fill
        clock = CheckpointClock(tcfg.checkpoint_every, CHECKPOINT_SECONDS, self.tokens)
        for acts in self.batches():
            lr_mult, sparsity = schedule(self.step, self.total_steps)
            for m in self.members:
                self._step(m, m.batch(acts), lr_mult, sparsity)
            self.step += 1
            self.tokens += len(acts[self.hooks[0]]) * dist.world_size()
            log.progress(self.tokens)
            log_now = self.step % tcfg.log_every == 0 or self.step == self.total_steps
            if log_now:
                for m in self.members:
                    m.check_finite(self.step, self.run)
                log.write(self.step, self.tokens, self.members)
            stop, due = self._agree(clock, at_log_step=log_now)
            if due and self.step < self.total_steps and not stop:
                self.checkpoint()
                clock.reset(self.tokens)
            if self.step >= self.total_steps or stop:
                break
        log.close()
        self._agree(None, at_log_step=True)  # the loop may end between agreements
        self.checkpoint()
        if self._stop_signal is not None:
            dist.print0(
                f"stopped by signal {self._stop_signal}; resume with --resume --out {self.run}"
            )
            return []
        finals = self._finish()
        log.finish()
        return finals

    def _agree(self, clock: CheckpointClock | None, at_log_step: bool) -> tuple[int, bool]:
        """(stop signal, checkpoint due) as all ranks agree on them: a signal reaches the ranks
        at different steps, and their clocks differ. Under torchrun they agree only at the log
        cadence: the host reads the collective's result, and on GPUs that waits until the step
        has finished. `clock` None asks only about the signal."""
        if not at_log_step and dist.is_distributed():
            return 0, False
        due = clock.due(self.tokens) if clock is not None else False
        stop, due = dist.max_each(self._stop_signal or 0, due)
        self._stop_signal = stop or None
        return stop, bool(due)

    def batches(self) -> Iterator[Acts]:
        """Training batches of the hooks the SAEs read, on the device, scaled, epoch after
        epoch; each epoch is a fresh store reshuffled with seed + epoch. A fresh run's first
        chunk fixes the scale (`_store`) and its first batch initialises the SAEs."""
        fresh = self.step == 0 and self.store_state is None
        while self.step < self.total_steps:
            stream = self.store if self.check is None else self.check.watch(self.store)
            for acts in stream:
                acts = {h: acts[h].to(self.device, non_blocking=True) for h in self.hooks}
                acts = self.scale.apply(acts)
                if fresh:
                    self._init_from_data(acts)
                    fresh = False
                yield acts
            self.epoch, self.store_state = self.epoch + 1, None
            self.store = self._store()  # a checkpoint from here on starts the next epoch
            if self.tcfg.total_tokens is None and self.epoch >= self.tcfg.epochs:
                return

    def _step(self, m: Member, batch: Batch, lr_mult: float, sparsity: float) -> None:
        for group in m.opt.param_groups:
            group["lr"] = m.lr * lr_mult
        dead = m.tokens_since_fired >= self.dead_tokens
        out = None
        if len(batch.x) >= 2:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tcfg.autocast):
                out = m.loss(batch, dead, sparsity)
            out.loss.backward()
            ok = torch.isfinite(out.loss.detach())
        else:  # the FVU needs two rows: a one-row last batch is skipped (the other ranks' too)
            for p in m.sae.parameters():
                p.grad = torch.zeros_like(p)
            ok = torch.zeros((), dtype=torch.bool, device=self.device)
        # Whether the loss was finite stays on the device: a non-finite one's gradient is
        # dropped by the optimizer step, on every rank, and counted (`Member.check_finite`).
        ok = dist.all_ranks(ok)
        dist.average_gradients(m.sae.parameters())
        if m.sae.unit_norm_decoder:
            m.sae.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(m.sae.parameters(), GRAD_CLIP)
        m.optimizer_step(ok)
        if m.sae.unit_norm_decoder:
            m.sae.set_decoder_unit_norm()
        if out is not None:
            m.after_step(out, dead, ok)

    # -- setup helpers --------------------------------------------------------------------------
    def _store(self) -> ActivationStore:
        """The store of this epoch; until the scale is known, its first chunk fixes it (one
        factor per hook for every rank and epoch, saved with the trainer state)."""
        cfg = dataclasses.replace(self.tcfg.store, seed=self.tcfg.store.seed + self.epoch)
        store = ActivationStore(self.source, cfg, self.store_state)
        store.on_fill = self.on_fill
        if self.scale.factors is None:
            store.on_first_chunk = self.scale.estimate
        return store

    def _init_from_data(self, acts: Acts) -> None:
        for m in self.members:
            x, y = m.batch(acts)
            ok = torch.isfinite(x).all(1) & (torch.isfinite(y).all(1) if y is not None else True)
            if not bool(ok.all()):  # NaN rows (their batch is skipped) must not reach the init
                x, y = x[ok], (y[ok] if y is not None else None)
            if len(x):  # no finite row at all: the random init stays
                m.sae.init_from_data(x, y, method=B_DEC_INIT, rows=DECODER_INIT)
            for t in m.sae.state_dict().values():  # replicas start equal, as under DDP
                dist.broadcast_(t)

    # -- checkpoints, resume, the end --------------------------------------------------------
    def checkpoint(self) -> Path | None:
        for m in self.members:  # a run that diverged stops here, not in a checkpoint
            m.check_finite(self.step, self.run)
        check = self.check.value if self.check is not None else None
        gathered = dist.all_gather_object((self.store.state_dict(), check))  # all ranks
        store_states, checks = [g[0] for g in gathered], [g[1] for g in gathered]
        if not dist.is_main():
            return None
        meta = run_metadata(self.tcfg, self.tokens)
        saes = {
            m.name: (lambda folder, m=m: m.save(folder, self.scale, meta), m.tensors())
            for m in self.members
        }
        trainer = {
            "step": self.step,
            "tokens": self.tokens,
            "epoch": self.epoch,
            "scale": self.scale.state_dict(),
            "skipped": {m.name: m.skipped_steps for m in self.members},
        }
        if self.check is not None:
            trainer["stream"] = checks
        parts = {"store_state": {"ranks": store_states}, "trainer": trainer, "saes": saes}
        return write_checkpoint(self.run, self.tokens, parts, keep=KEEP_CHECKPOINTS)

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run, report=dist.print0)
        if ckpt is None:  # killed before its first checkpoint: the same run from the start
            dist.print0(f"no checkpoint in {self.run} yet; starting the run from the beginning")
            return
        state = read_checkpoint(ckpt, [m.name for m in self.members])
        t = state["trainer"]
        self.step, self.tokens, self.epoch = t["step"], t["tokens"], t["epoch"]
        if self.check is not None and "stream" in t:
            self.check = StreamCheck(t["stream"][dist.rank()])
        self.scale.load_state_dict(t["scale"])
        self.store_state = rank_store_state(state)
        for m in self.members:
            m.load_tensors(state["saes"][m.name], t["skipped"][m.name])
        dist.print0(f"resumed from {ckpt} at step {self.step} ({self.tokens} tokens)")

    def _finish(self) -> list[Path]:
        """Score on held-out data, write final/<sae>/ with its train_summary.json, print."""
        tcfg = self.tcfg
        store, where = heldout_store(tcfg, self.source)
        results = score_members(
            self.members, store, where, self.scale, tcfg.eval_tokens, self.dead_tokens, self.device
        )
        finals = [self.run / "final" / m.name for m in self.members]
        if dist.is_main():
            meta = run_metadata(self.tcfg, self.tokens)
            for m, folder in zip(self.members, finals, strict=True):
                density = results[m.name].pop("log10_density", None)
                m.save(folder, self.scale, meta, sparsity=density)
                TrainSummary.from_json(results[m.name]).write(folder)
            print_summary(results, self.members)
        sources = {id(s): s for s in (self.source, store.source)}.values()
        skipped = sum(s.skipped_rows for s in sources)
        skipped = int(dist.all_reduce(torch.tensor(skipped, dtype=torch.int64)))
        if skipped:
            dist.print0(
                f"skipped {skipped:,} activation rows holding NaN or infinite values "
                "(store.skip_nonfinite)"
            )
        dist.barrier()  # no rank leaves before the final folders exist
        return finals


def train(tcfg: TrainConfig) -> list[Path]:
    trainer = Trainer(tcfg)
    try:
        return trainer.fit()
    except NonFiniteRows as e:  # rows past those scanned at the start (or held-out ones)
        raise NonFiniteRows(
            f"{e} The run stopped there; its last checkpoint in {str(trainer.run)!r} is intact "
            "and continues with --resume once the rows are removed or skipped."
        ) from None
