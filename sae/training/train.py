"""`sae train`: train one or more SAEs from one activation stream.

    sae train                                            # built-in default: MiniLM resid_post.3, TopK
    sae train configs/minilm_topk.yaml --sae.k 64 --out checkpoints/k64
    sae train --activations acts.npy --eval-activations heldout.npy
    sae train configs/sweep.yaml --sweep k=16 k=32 k=64    # three SAEs, one harvest
    sae train --out checkpoints/k64 --resume             # continue an interrupted run
    sae train --model.device cuda --autocast --compile   # GPU: bf16 autocast, torch.compile
    torchrun --nproc_per_node 2 -m sae train configs/minilm_topk.yaml   # data-parallel (DDP)

The loop (`Trainer.fit`): next batch (`batches` owns epochs and reshuffling) -> LR and sparsity
warm-up -> step every SAE -> log -> maybe checkpoint -> stop at the end or on a signal. The
store normalises activations to unit mean squared norm; the scale is folded into the saved
weights, so a saved SAE maps raw activations to raw reconstructions. The last line printed is
the final SAE folder.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from sae import dist
from sae.activations.capture import resolve_device
from sae.activations.sources import CacheSource, LiveSource, SyntheticSource, open_source
from sae.activations.store import ActivationStore
from sae.cliconfig import save_yaml
from sae.config import (
    B_DEC_INIT,
    CHECKPOINT_SECONDS,
    DECODER_INIT,
    GRAD_CLIP,
    KEEP_CHECKPOINTS,
    TrainConfig,
)
from sae.fsutil import atomic_write_json, remove_write_leftovers
from sae.malloc import keep_freed_memory
from sae.training.checkpoint import (
    CheckpointClock,
    check_run_folder,
    latest_checkpoint,
    rank_store_state,
    read_checkpoint,
    write_checkpoint,
)
from sae.training.heldout import heldout_store, score_members
from sae.training.members import (
    Member,
    build_members,
    dead_window,
    loss_fn,
    rows_per_epoch,
    run_metadata,
    schedule,
    threshold_rate,
)
from sae.training.runlog import RunLog, print_summary

Batch = dict[str, torch.Tensor]


class Trainer:
    def __init__(self, tcfg: TrainConfig):
        """Setup: check the run folder, open the source, build the SAEs, size the schedule,
        and restore the latest checkpoint under --resume."""
        self.tcfg = tcfg
        keep_freed_memory()  # the CPU step reuses its freed tensors (sae/malloc.py)
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
        if isinstance(self.source, CacheSource):
            self.source.check_matches(tcfg.model.name, hooks)
        torch.manual_seed(tcfg.seed)
        self.members = build_members(tcfg, self.source, self.device)
        B = tcfg.store.batch_size
        if tcfg.total_tokens is not None:
            self.total_steps = max(1, tcfg.total_tokens // (B * world))
        else:
            steps = rows_per_epoch(self.source, tcfg) * tcfg.epochs // B
            self.total_steps = max(1, dist.min_over_ranks(steps))
        self.dead_tokens = dead_window(tcfg, self.total_steps * B * world)
        rate = threshold_rate(self.total_steps)
        self._forward = {m.name: loss_fn(m.sae, tcfg.compile, rate) for m in self.members}
        self.step, self.tokens, self.epoch = 0, 0, 0
        self.stream = [0, 0.0]  # this rank's rows read and the sum of their first column
        self.scale: dict[str, float] | None = None  # hook -> factor; None until the first batch
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
            self.run.mkdir(parents=True, exist_ok=True)
            # A run killed while writing its config, a checkpoint or a final SAE folder left
            # temporaries (hidden, never read); the run that continues it deletes them.
            for folder in (self.run, self.run / "final"):
                remove_write_leftovers(folder)
            save_yaml(tcfg, self.run / "config.yaml")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, f: setattr(self, "_stop_signal", s))
        log = RunLog(tcfg, self.total_steps * tcfg.store.batch_size, self.tokens)
        live = isinstance(self.source, LiveSource)
        self.on_fill = lambda on: log.filling(
            on, f"running {tcfg.model.name}" if live and not self.source.memoized else "reading"
        )
        self.store.on_fill = self.on_fill
        clock = CheckpointClock(tcfg.checkpoint_every, CHECKPOINT_SECONDS, self.tokens)
        for batch in self.batches():
            lr_mult, sparsity = schedule(self.step, self.total_steps)
            for m in self.members:
                self._step(m, batch, lr_mult, sparsity)
            self.step += 1
            self.tokens += len(next(iter(batch.values()))) * dist.world_size()
            log.progress(self.tokens)
            log_now = self.step % tcfg.log_every == 0 or self.step == self.total_steps
            if log_now:
                for m in self.members:
                    m.check_finite(self.step, self.run)
                log.write(self.step, self.tokens, self.members)
            stop = 0
            # Ranks agree on both: a signal reaches them at different steps, clocks differ. Under
            # torchrun only at the log cadence: the host reads the collective's result, and on
            # GPUs that waits until the step has finished.
            if log_now or not dist.is_distributed():
                stop, due = dist.max_each(self._stop_signal or 0, clock.due(self.tokens))
                self._stop_signal = stop or None
                if due and self.step < self.total_steps and not stop:
                    self.checkpoint()
                    clock.reset(self.tokens)
            if self.step >= self.total_steps or stop:
                break
        log.close()
        stop, _ = dist.max_each(self._stop_signal or 0, 0)  # the loop may end between agreements
        self._stop_signal = stop or None
        self.checkpoint()
        if self._stop_signal is not None:
            dist.print0(
                f"stopped by signal {self._stop_signal}; resume with --resume --out {self.run}"
            )
            return []
        finals = self._finish()
        log.finish()
        return finals

    def batches(self) -> Iterator[Batch]:
        """Training batches, scaled, epoch after epoch; each epoch is a fresh store reshuffled
        with seed + epoch. A fresh run's first batch fixes the scale and initialises the SAEs."""
        while self.step < self.total_steps:
            for batch in self.store:
                # Rows and the sum of their first column, as trained: a resumed run that lost
                # or repeated a row ends with other figures than the uninterrupted one.
                first = next(iter(batch.values()))
                self.stream = [
                    self.stream[0] + len(first),
                    self.stream[1] + float(first[:, 0].double().sum()),
                ]
                if self.scale is None:
                    self._set_scale()
                batch = {h: x * self.scale.get(h, 1.0) for h, x in batch.items()}
                if self.step == 0 and self.store_state is None:
                    self._init_from_data(batch)
                yield batch
            self.epoch, self.store_state = self.epoch + 1, None
            self.store = self._store()  # a checkpoint from here on starts the next epoch
            if self.tcfg.total_tokens is None and self.epoch >= self.tcfg.epochs:
                return

    def _step(self, m: Member, batch: Batch, lr_mult: float, sparsity: float) -> None:
        x = batch[m.hook].to(self.device, non_blocking=True)
        y = batch[m.target].to(self.device, non_blocking=True) if m.target else None
        for group in m.opt.param_groups:
            group["lr"] = m.lr * lr_mult
        dead = m.tokens_since_fired >= self.dead_tokens
        out = None
        if len(x) >= 2:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tcfg.autocast):
                out = self._forward[m.name](x, y, dead, sparsity)
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
        # The trainer applies the normalisation itself (self.scale), so it is one factor for
        # all ranks and epochs, saved with the trainer state.
        seed = self.tcfg.store.seed + self.epoch
        cfg = dataclasses.replace(self.tcfg.store, seed=seed, normalize=False)
        store = ActivationStore(self.source, cfg, self.store_state)
        store.on_fill = self.on_fill
        return store

    def _set_scale(self) -> None:
        """Unit mean squared norm, from rank 0's first chunk, identical on every rank."""
        if not self.tcfg.store.normalize:
            self.scale = {}
            return
        factors = self.store.norm_factor
        hooks = sorted(factors)
        t = dist.broadcast_(torch.tensor([factors[h] for h in hooks], dtype=torch.float64))
        self.scale = dict(zip(hooks, t.tolist(), strict=True))

    def _init_from_data(self, batch: Batch) -> None:
        for m in self.members:
            x = batch[m.hook].to(self.device)
            y = batch[m.target].to(self.device) if m.target else None
            m.sae.init_from_data(x, y, method=B_DEC_INIT, rows=DECODER_INIT)
            for t in m.sae.state_dict().values():  # replicas start equal, as under DDP
                dist.broadcast_(t)

    # -- checkpoints, resume, the end --------------------------------------------------------
    def checkpoint(self) -> Path | None:
        for m in self.members:  # a run that diverged stops here, not in a checkpoint
            m.check_finite(self.step, self.run)
        gathered = dist.all_gather_object((self.store.state_dict(), self.stream))  # all ranks
        store_states, streams = [g[0] for g in gathered], [g[1] for g in gathered]
        if not dist.is_main():
            return None
        scale, meta = self.scale or {}, run_metadata(self.tcfg, self.tokens)
        saes = {
            m.name: (lambda folder, m=m: m.save(folder, scale, meta), m.tensors())
            for m in self.members
        }
        trainer = {
            "step": self.step,
            "tokens": self.tokens,
            "epoch": self.epoch,
            "scale": self.scale,
            "skipped": {m.name: m.skipped_steps for m in self.members},
            "stream": streams,
        }
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
        self.stream = t.get("stream", [[0, 0.0]] * dist.world_size())[dist.rank()]
        self.scale = t["scale"]
        self.store_state = rank_store_state(state)
        for m in self.members:
            m.load_tensors(state["saes"][m.name], t["skipped"][m.name])
        dist.print0(f"resumed from {ckpt} at step {self.step} ({self.tokens} tokens)")

    def _finish(self) -> list[Path]:
        """Score on held-out data, write final/<sae>/ with its train_summary.json, print."""
        tcfg = self.tcfg
        store, where = heldout_store(tcfg, self.source)
        results = score_members(
            self.members, store, where, self.scale or {}, tcfg.eval_tokens, self.dead_tokens,
            self.device,
        )  # fmt: skip
        finals = [self.run / "final" / m.name for m in self.members]
        if dist.is_main():
            meta = run_metadata(self.tcfg, self.tokens)
            for m, folder in zip(self.members, finals, strict=True):
                density = results[m.name].pop("log10_density", None)
                m.save(folder, self.scale or {}, meta, sparsity=density)
                atomic_write_json(folder / "train_summary.json", results[m.name])
            print_summary(results, self.members)
        dist.barrier()  # no rank leaves before the final folders exist
        return finals


def train(tcfg: TrainConfig) -> list[Path]:
    return Trainer(tcfg).fit()
