"""The `records` suite: feature records from one streaming, memory-bounded, resumable pass.

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite records --out reports/rec
    sae eval SAE_DIR --suite records,capacity --eval-tokens 100000 --out reports/rec   # + capacity
    sae eval SAE_DIR --suite records --device cuda --batch-windows 64 --out reports/rec  # GPU

Per latent: the top-activating contexts (a window of BEFORE + 1 + AFTER tokens around each
activation, token ids, per-token activations), samples from equal-mass activation bins, firing
frequency, mean/max activation, the activation histogram, logit effects, and the most correlated
input coordinates ("neurons") and latents — definitions in docs/methods.md#feature-records.

Written to REPORT/<sae>/records/: `records.safetensors` (tensors, names below) and
`records.json` (settings, provenance, token strings, what each tensor holds). While the pass
runs, `state.safetensors` + `state.json` are saved every SAVE_EVERY batches; rerunning the same
command resumes from there (the same sample is drawn: keys are seeded by batch index). Per-latent
columns go to REPORT/<sae>/latents.parquet (sae/eval/table.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from sae.activations.capture import resolve_device
from sae.activations.provenance import held_out_summary
from sae.eval import finalize as fin
from sae.eval.accumulate import MAX_CORR_LATENTS, Accumulator
from sae.eval.base import EvalContext, EvalTarget, SuiteResult
from sae.eval.stream import rows, window_batches
from sae.eval.table import update_latents_table
from sae.fsutil import (
    atomic_save_safetensors,
    atomic_write_json,
    remove,
    sha256_json,
    sha256_tensors,
)
from sae.io.records import RecordError, RecordsContext, RecordsInfo

RECORDS_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RecordSettings:
    """What a records pass keeps per latent (fixed; the pass's identity for resuming)."""

    top_k: int = 20
    """top-activating contexts kept."""
    n_bins: int = 5
    """equal-mass activation bins sampled."""
    per_bin: int = 5
    """samples per bin."""
    reservoir: int = 64
    """uniform sample of firing tokens the bin samples are drawn from."""
    before: int = 10
    """context tokens before the activating token."""
    after: int = 5
    """context tokens after it."""
    n_corr: int = 10
    """correlated latents / neurons listed."""
    n_logits: int = 10
    """top and bottom logit tokens listed."""
    logit_bins: int = 40
    """bars of the logit-effect histogram."""


SAVE_EVERY = 25
"""batches between saved states (resume points)."""


def check(target: EvalTarget) -> None:
    """Any stream works: live windows give token contexts; files and synthetic rows give rows."""


def _batches(target: EvalTarget, ctx: EvalContext, sae, device):
    """(a_BTM, x_BTD, tokens_BT | None, keep_BT, window_B, kept tokens) per batch, in order."""
    hook = target.source_hooks[0]
    if target.stream == "live":
        src = target.source
        for wb in window_batches(src, ctx.eval_tokens, ctx.batch_windows, target.windows_read):
            x_BTD = src.capture(wb.ids_BT)[hook].float().to(device)
            with torch.no_grad():
                a_BTM = sae.encode(x_BTD)
            yield a_BTM, x_BTD, wb.ids_BT, wb.keep_BT, wb.index_B
        return
    start = 0
    for b in rows(target, ctx.eval_tokens):
        x = b.x_ND.float().to(device)[:, None, :]
        with torch.no_grad():
            a = sae.encode(x)
        n = len(x)
        yield a, x, None, torch.ones(n, 1, dtype=torch.bool), torch.arange(start, start + n)
        start += n


def sae_sha256(sae) -> str:
    """Hash of an SAE's config and weights as loaded, so records know their SAE whichever layout
    or place it came from (a sparsify or dictionary_learning folder, a Hub repo: issue 24)."""
    return sha256_json([dataclasses.asdict(sae.cfg), sha256_tensors(sae.state_dict())])


def _identity(target: EvalTarget, ctx: EvalContext, settings: RecordSettings) -> dict[str, Any]:
    prov = {k: v for k, v in target.provenance.items() if k != "held_out"}
    return {
        "records_version": RECORDS_VERSION,
        "settings": dataclasses.asdict(settings),
        "eval_tokens": ctx.eval_tokens,
        "batch_windows": ctx.batch_windows,
        "seed": ctx.seed,
        "sae_sha256": sae_sha256(target.sae),
        "activations": prov,
    }


def records_pass(
    target: EvalTarget, ctx: EvalContext, settings: RecordSettings | None = None
) -> Path:
    """Run (or resume, or reuse) the records pass of `target`; return the records folder."""
    settings = settings or RecordSettings()
    folder = ctx.out / target.name / "records"
    ident = _identity(target, ctx, settings)
    key = sha256_json(ident)
    if _finished_identity(folder) == key:
        return folder
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    acc = Accumulator(
        sae.cfg.d_sae,
        sae.cfg.d_in,
        settings.top_k,
        settings.reservoir,
        settings.before,
        settings.after,
        ctx.seed,
    )
    start, windows = 0, []
    state_json = folder / "state.json"
    if state_json.is_file() and _read_json(state_json).get("identity_sha256") == key:
        st = load_file(str(folder / "state.safetensors"))
        acc.load_state_dict({k: v for k, v in st.items() if k != "windows_read"})
        windows = [st["windows_read"]]
        start = int(_read_json(state_json)["batches_done"])
    bar = tqdm(
        total=ctx.eval_tokens,
        initial=int(acc.s["n_tokens"]),
        unit="tok",
        unit_scale=True,
        desc=f"records {target.name}",
        disable=None,
    )
    i = -1
    for i, (a, x, tok, keep, win) in enumerate(_batches(target, ctx, sae, device)):
        if i < start:
            continue
        acc.update(a, x, tok, keep, win, i)
        windows.append(win.cpu())
        bar.update(int(keep.sum()))
        if (i + 1) % SAVE_EVERY == 0:
            _save_state(folder, acc, windows, i + 1, key)
    bar.close()
    read = torch.cat(windows) if windows else torch.zeros(0)
    _write_records(target, folder, acc, read, ident, key)
    for name in ("state.safetensors", "state.json"):
        remove(folder / name, "report")
    return folder


def _finished_identity(folder: Path) -> str | None:
    """The identity hash of the finished records in `folder` (None: none, or unreadable)."""
    if not (folder / RecordsInfo.FILE).is_file():
        return None
    try:
        return RecordsInfo.read(folder).identity_sha256
    except RecordError:
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(folder: Path, acc: Accumulator, windows, batches: int, key: str) -> None:
    win = torch.cat(windows) if windows else torch.zeros(0, dtype=torch.int64)
    windows[:] = [win]
    atomic_save_safetensors(folder / "state.safetensors", {**acc.state_dict(), "windows_read": win})
    atomic_write_json(folder / "state.json", {"identity_sha256": key, "batches_done": batches})


def _model_and_tokenizer(target: EvalTarget):
    if target.stream != "live":
        return None, None
    src = target.source
    return src.capture.model, src.windows.tokenizer


def _write_records(
    target: EvalTarget, folder: Path, acc: Accumulator, windows, ident, key: str
) -> None:
    st, cfg = acc.state_dict(), RecordSettings(**ident["settings"])
    model, tokenizer = _model_and_tokenizer(target)
    n = int(st["n_tokens"])
    fired = st["fired_M"]
    tensors: dict[str, torch.Tensor] = {
        "frequency": fired.double() / max(n, 1),
        "mean_activation": st["sum_M"] / max(n, 1),
        "mean_firing_activation": torch.where(fired > 0, st["sum_M"] / fired.clamp_min(1), 0.0),
        "max_activation": st["max_M"],
        "fired": fired,
        "hist_counts": st["hist_MH"],
        "hist_edges": fin.HIST_EDGES,
    }
    for name in ("top", "res"):
        for f in ("val_MK", "id_MK", "acts_MKW", "tok_MKW"):
            tensors[f"{name}_{f.split('_')[0]}"] = st[f"{name}_{f}"]
    edges, counts = fin.quantile_bins(st["hist_MH"], fired, st["max_M"], cfg.n_bins)
    tensors |= {"bin_edges": edges, "bin_counts": counts}
    tensors["res_bin"] = fin.pick_samples(st["res_val_MK"], st["res_id_MK"], edges, cfg.per_bin)
    tensors |= fin.correlations(st, cfg.n_corr)
    W_dec = target.sae.W_dec.detach().float().cpu()
    logits, logit_info = fin.logit_effects(W_dec, model, cfg.n_logits, cfg.logit_bins)
    tensors |= logits | fin.neuron_alignment(W_dec, cfg.n_corr)
    ids = [tensors["top_tok"].flatten(), tensors["res_tok"].flatten()]
    ids += [logits[k].flatten() for k in ("logit_top_id", "logit_bot_id") if k in logits]
    strings = fin.token_strings(tokenizer, torch.cat([i.long() for i in ids]))
    prov = dict(target.provenance)
    if target.stream == "live":
        prov |= held_out_summary(prov.get("train_data"), prov["data"], windows)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / "records.safetensors", tensors)
    RecordsInfo(
        records_version=RECORDS_VERSION,
        sae=target.name,
        sae_folder=str(target.folder),
        d_sae=target.sae.cfg.d_sae,
        tokens=n,
        settings=ident["settings"],
        context=RecordsContext(before=cfg.before, after=cfg.after, pad_token=-1),
        activations=prov,
        logit_effects=logit_info,
        correlated_latents="corr_latent_idx" in tensors
        or f"skipped: d_sae > {MAX_CORR_LATENTS} would need a d_sae² matrix",
        identity=ident,
        token_strings={str(k): v for k, v in strings.items()},
        identity_sha256=key,
    ).write(folder)
    columns = {
        "frequency": tensors["frequency"].numpy(),
        "mean_activation": tensors["mean_activation"].numpy(),
        "mean_firing_activation": tensors["mean_firing_activation"].numpy(),
        "max_activation": tensors["max_activation"].double().numpy(),
    }
    if "logit_top_id" in logits:
        columns["top_logit_token"] = [strings.get(int(i), "") for i in logits["logit_top_id"][:, 0]]
    top_tok = tensors["top_tok"][:, 0, cfg.before]
    columns["top_context_token"] = [strings.get(int(i), "") for i in top_tok]
    update_latents_table(target_table(target, folder), columns, "records", target.sae.cfg.d_sae)


def target_table(target: EvalTarget, records_folder: Path) -> Path:
    return records_folder.parent / "latents.parquet"


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    folder = records_pass(target, ctx)
    info = RecordsInfo.read(folder)
    dead = int((load_file(str(folder / "records.safetensors"))["fired"] == 0).sum())
    rel = str(folder.relative_to(ctx.out))
    results = {
        "tokens": info.tokens,
        "dead": dead,
        "records": rel,
        "latents_table": str((folder.parent / "latents.parquet").relative_to(ctx.out)),
        "logit_effects": info.logit_effects,
        "settings": info.settings,
    }
    logits = info.logit_effects
    md = (
        f"Feature records of {info.d_sae:,} latents over {info.tokens:,} tokens "
        f"({dead} never fired) in `{rel}/`; per-latent table `{results['latents_table']}`. "
        f"Logit effects: {logits.get('kind') or logits.get('skipped')}."
    )
    return SuiteResult(results, {}, md)
