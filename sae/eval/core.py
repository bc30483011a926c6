"""The `core` suite: reconstruction, sparsity, latent usage, and downstream fidelity with the SAE
spliced into its model, each headline number with a 95% bootstrap interval over windows.

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite core --out reports/k32

Every quantity is a ratio of sums over the scored tokens, accumulated in float64 per window for
the bootstrap; the definitions live in one place, docs/methods.md:
- mse, fvu, explained_variance: docs/methods.md#mse, docs/methods.md#fvu-and-explained-variance;
- cosine, l2_ratio: docs/methods.md#cosine-and-l2-ratio;
- optimal_scale, relative_reconstruction_bias: docs/methods.md#shrinkage;
- l0, dead, dense: docs/methods.md#l0, docs/methods.md#dead-and-dense-latents;
- causal LMs (ce_*, kl, ce_recovered*): docs/methods.md#ce-kl-and-ce-recovered, with the zero and
  mean ablations of docs/methods.md#ablation-baselines;
- encoders (hidden_cosine, pooled_cosine): docs/methods.md#encoder-cosines;
- intervals: docs/methods.md#bootstrap-over-windows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from sae.activations.capture import ActivationCapture, resolve_device, resolve_hooks
from sae.activations.sources import CacheSource
from sae.eval import plots
from sae.eval.base import EvalContext, EvalTarget, SuiteResult, fmt, metric
from sae.eval.splice import (
    embedding_cosines,
    forward,
    kl_clean_spliced,
    model_kind,
    next_token_ce,
)
from sae.eval.stats import WindowSums, bootstrap, histogram, resample_counts
from sae.eval.stream import BLOCK_ROWS, rows, window_batches

# name -> (statistic of summed quantities, the count it averages over, unit)


def recon_stats(d: int) -> dict:
    return {
        "mse": (lambda s: s["sq_err"] / (s["n"] * d), "n", "activation units^2 per dimension"),
        "fvu": (lambda s: s["sq_err"] / _var(s), "n", "fraction"),
        "explained_variance": (lambda s: 1 - s["sq_err"] / _var(s), "n", "fraction"),
        "cosine": (lambda s: s["cos"] / s["n"], "n", "cosine"),
        "l2_ratio": (lambda s: s["l2_ratio"] / s["n"], "n", "ratio"),
        "optimal_scale": (lambda s: s["dot"] / s["yhat2"], "n", "ratio"),
        "relative_reconstruction_bias": (lambda s: s["yhat2"] / s["dot"], "n", "ratio"),
        "l0": (lambda s: s["l0"] / s["n"], "n", "latents per token"),
    }


CAUSAL = {
    "ce_clean": (lambda s: s["ce_clean"] / s["n_pred"], "n_pred", "nats"),
    "ce_spliced": (lambda s: s["ce_spliced"] / s["n_pred"], "n_pred", "nats"),
    "ce_zero_ablation": (lambda s: s["ce_zero"] / s["n_pred"], "n_pred", "nats"),
    "ce_mean_ablation": (lambda s: s["ce_mean"] / s["n_pred"], "n_pred", "nats"),
    "ce_increase": (lambda s: (s["ce_spliced"] - s["ce_clean"]) / s["n_pred"], "n_pred", "nats"),
    "kl": (lambda s: s["kl"] / s["n_kl"], "n_kl", "nats"),
    "ce_recovered": (lambda s: _recovered(s, "ce_zero"), "n_pred", "fraction"),
    "ce_recovered_mean_ablation": (lambda s: _recovered(s, "ce_mean"), "n_pred", "fraction"),
}
ENCODER = {
    "hidden_cosine": (lambda s: s["hidden_cos"] / s["n_pos"], "n_pos", "cosine"),
    "pooled_cosine": (lambda s: s["pooled_cos"] / s["n_seq"], "n_seq", "cosine"),
}
OVER = {
    "n": "tokens",
    "n_pred": "predictions",
    "n_kl": "positions",
    "n_pos": "positions",
    "n_seq": "windows",
}


def _var(s):
    return s["sum_yc2"] - s["sum_yc"].pow(2).sum(-1) / s["n"]


def _recovered(s, ablation: str):
    return (s[ablation] - s["ce_spliced"]) / (s[ablation] - s["ce_clean"])


def check(target: EvalTarget) -> None:
    """Nothing beyond the runner's checks (widths, hooks): any stream kind can be scored."""


class _Recon:
    """Per-window reconstruction sums and per-latent firing counts of one SAE."""

    def __init__(self, d_sae: int):
        self.acc = WindowSums()
        self.fired_M = torch.zeros(d_sae, dtype=torch.float64)
        self.l0_parts: list[torch.Tensor] = []
        self.center_D: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, sae, x_ND, y_ND, window_N):
        out = sae.forward_sparse(x_ND)  # no dense [N, d_sae] latents on the TopK path
        y, yh = y_ND.double(), out.x_hat.double()
        if self.center_D is None:
            self.center_D = y.mean(0)
        yc = y - self.center_D
        ny, nyh = y.norm(dim=-1), yh.norm(dim=-1)
        dot = (yh * y).sum(-1)
        acts_NK, idx_NK = out.codes
        active_NK = acts_NK != 0
        l0_N = active_NK.sum(-1)
        self.fired_M.index_add_(0, idx_NK[active_NK].cpu(), torch.ones(int(l0_N.sum())).double())
        self.l0_parts.append(l0_N.cpu())
        self.acc.add(
            window_N,
            n=torch.ones_like(ny),
            sq_err=(y - yh).pow(2).sum(-1),
            sum_yc=yc,
            sum_yc2=yc.pow(2).sum(-1),
            dot=dot,
            yhat2=nyh.pow(2),
            cos=dot / (ny * nyh).clamp_min(1e-30),
            l2_ratio=nyh / ny.clamp_min(1e-30),
            l0=l0_N.double(),
        )
        return out


def _tick(ctx: EvalContext, key: str, t0: float) -> float:
    t = time.perf_counter()
    ctx.timings[key] = ctx.timings.get(key, 0.0) + t - t0
    return t


def _ablation_ce(target: EvalTarget, ctx: EvalContext, point) -> dict[int, tuple[float, float]]:
    """window -> (summed CE with the hooked positions zeroed, with them set to their mean).
    Shared by every SAE of the run that splices at the same point of the same windows."""
    src = target.source
    key = (
        "ablation",
        target.meta.get("model_name"),
        point.name,
        repr(target.data),
        ctx.eval_tokens,
        src.store_cfg.exclude_bos,
        src.store_cfg.exclude_special,
    )
    if key in ctx.memo:
        return ctx.memo[key]
    model, t0 = src.capture.model, time.perf_counter()
    capture = ActivationCapture(model, [point.name])  # stops at the hook: cheap
    total, count = None, 0
    for wb in window_batches(src, ctx.eval_tokens, ctx.batch_windows, target.windows_read):
        a = capture(wb.ids_BT)[point.name]
        rows_ND = a[wb.keep_BT.to(a.device)].double()
        total = rows_ND.sum(0) if total is None else total + rows_ND.sum(0)
        count += len(rows_ND)
    mean_D = (total / max(count, 1)).float()
    out: dict[int, tuple[float, float]] = {}
    for wb in window_batches(src, ctx.eval_tokens, ctx.batch_windows, target.windows_read):
        keep = wb.keep_BT.to(mean_D.device)[..., None]
        zero = forward(model, wb.ids_BT, replace=(point, lambda v, k=keep: v.masked_fill(k, 0.0)))
        ce_z = next_token_ce(zero.out, wb.ids_BT)
        del zero
        mean = forward(
            model, wb.ids_BT, replace=(point, lambda v, k=keep: torch.where(k, mean_D.to(v), v))
        )
        ce_m = next_token_ce(mean.out, wb.ids_BT)
        for i, z, m in zip(wb.index_B.tolist(), ce_z.tolist(), ce_m.tolist(), strict=True):
            out[i] = (z, m)
    _tick(ctx, "ablation baselines", t0)
    ctx.memo[key] = out
    return out


def _live(target: EvalTarget, ctx: EvalContext, sae, rec: _Recon) -> str:
    """Clean pass (capture) -> SAE -> spliced pass, per batch of held-out windows."""
    src = target.source
    model = src.capture.model
    kind = model_kind(model)
    points = resolve_hooks(model, [h for h in (target.hook, target.target_hook) if h])
    p_in, p_out = points[0], points[-1]
    base = _ablation_ce(target, ctx, p_out) if kind == "causal_lm" else {}
    acc = rec.acc
    t0 = time.perf_counter()
    for wb in window_batches(src, ctx.eval_tokens, ctx.batch_windows, target.windows_read):
        t0 = _tick(ctx, "read + tokenise windows", t0)
        clean = forward(model, wb.ids_BT, capture=points)
        t0 = _tick(ctx, "clean forward", t0)
        x_BTD, y_BTD = clean.acts[p_in.name], clean.acts[p_out.name]
        keep_BT = wb.keep_BT.to(x_BTD.device)
        window_N = wb.index_B[:, None].expand_as(wb.ids_BT)[wb.keep_BT]
        out = rec.add(sae, x_BTD[keep_BT], y_BTD[keep_BT], window_N)
        rep_BTD = y_BTD.clone()
        rep_BTD[keep_BT] = out.x_hat.to(rep_BTD.dtype)
        t0 = _tick(ctx, "sae + sums", t0)
        spliced = forward(model, wb.ids_BT, replace=(p_out, lambda v, r=rep_BTD: r))
        t0 = _tick(ctx, "spliced forward", t0)
        B, T = wb.ids_BT.shape
        if kind == "causal_lm":
            zero_m = torch.tensor([base[i] for i in wb.index_B.tolist()], dtype=torch.float64)
            acc.add(
                wb.index_B,
                ce_clean=next_token_ce(clean.out, wb.ids_BT),
                ce_spliced=next_token_ce(spliced.out, wb.ids_BT),
                ce_zero=zero_m[:, 0],
                ce_mean=zero_m[:, 1],
                n_pred=torch.full((B,), T - 1.0),
                kl=kl_clean_spliced(clean.out, spliced.out),
                n_kl=torch.full((B,), float(T)),
            )
        else:
            tok_cos, n_pos, pooled = embedding_cosines(clean.out, spliced.out)
            acc.add(
                wb.index_B, hidden_cos=tok_cos, n_pos=n_pos, pooled_cos=pooled, n_seq=torch.ones(B)
            )
        t0 = _tick(ctx, "downstream metrics", t0)
    return kind


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    rec = _Recon(sae.cfg.d_sae)
    if target.stream == "live":
        kind: str | None = _live(target, ctx, sae, rec)
        why_not = None
    else:
        t0 = time.perf_counter()
        for b in rows(target, ctx.eval_tokens):
            rec.add(sae, b.x_ND.to(device), b.y_ND.to(device), b.window_N)
        _tick(ctx, "sae + sums", t0)
        kind = None
        why_not = (
            f"activations come from a {target.stream} source, so there is no model run "
            "to splice into"
        )
    t0 = time.perf_counter()
    sums = rec.acc.totals()
    n_windows = rec.acc.n_windows
    n_tokens = int(sums["n"].sum())
    counts = resample_counts(n_windows, ctx.n_boot, ctx.seed) if ctx.n_boot else None

    def table(stats: dict) -> dict[str, Any]:
        out = {}
        for name, (fn, count, unit) in stats.items():
            iv = bootstrap(sums, fn, counts)
            out[name] = metric(iv.value, iv.ci95, int(sums[count].sum()), OVER[count], unit)
        return out

    recon = table(recon_stats(sae.cfg.width_out))
    downstream: dict[str, Any] = {"kind": kind, "skipped": why_not}
    if kind == "causal_lm":
        downstream |= {
            "baseline": "zero ablation (ce_recovered); mean ablation beside it",
            "metrics": table(CAUSAL),
        }
    elif kind == "encoder":
        downstream |= {"metrics": table(ENCODER)}
    n = max(n_tokens, 1)
    density_M = rec.fired_M / n
    dead = rec.fired_M == 0
    l0_N = torch.cat(rec.l0_parts) if rec.l0_parts else torch.zeros(0, dtype=torch.long)
    l0_counts = torch.bincount(l0_N).tolist()
    log10_live = torch.log10(density_M[~dead]).numpy()
    d_sae = sae.cfg.d_sae
    latents = {
        "d_sae": d_sae,
        "dead": int(dead.sum()),
        "dead_frac": float(dead.double().mean()),
        "dense_1pct": int((density_M > 0.01).sum()),
        "dense_10pct": int((density_M > 0.10).sum()),
        "tokens": n_tokens,
        "l0_histogram": {"values": list(range(len(l0_counts))), "counts": l0_counts},
        "log10_density_histogram": histogram(
            torch.from_numpy(log10_live),
            torch.arange(-np.ceil(np.log10(max(n, 10))), 0.0001, 0.2, dtype=torch.float64),
        ),
    }
    figs = {"density": ctx.figure_path(target, "density"), "l0": ctx.figure_path(target, "l0")}
    plots.density(figs["density"], log10_live, latents["dead"], n_tokens, target.name)
    plots.l0(figs["l0"], l0_counts, recon["l0"]["value"] or 0.0, target.name)
    results = {
        "tokens": n_tokens,
        "windows": n_windows,
        "bootstrap": {
            "resamples": ctx.n_boot,
            "unit": _unit(target),
            "level": 0.95,
            "method": "percentile",
            "seed": ctx.seed,
        },
        "reconstruction": recon,
        "latents": latents,
        "downstream": downstream,
    }
    _tick(ctx, "bootstrap + plots", t0)
    rel = {k: str(p.relative_to(ctx.out)) for k, p in figs.items()}
    return SuiteResult(results, rel, _markdown(results, rel))


def _unit(target: EvalTarget) -> str:
    """What the bootstrap resamples: windows where the rows carry them, else row blocks."""
    if target.stream == "live" or isinstance(target.source, CacheSource):
        return "window (sequence)"
    return f"block of {BLOCK_ROWS} consecutive rows (the source has no windows)"


def _markdown(r: dict, figs: dict[str, str]) -> str:
    lines = [
        f"Scored on {r['tokens']:,} tokens in {r['windows']:,} bootstrap units "
        f"({r['bootstrap']['unit']}); 95% intervals from {r['bootstrap']['resamples']} "
        "resamples of those units.",
        "",
        "| metric | value | 95% interval | unit |",
        "|---|---|---|---|",
    ]
    groups = [r["reconstruction"], (r["downstream"].get("metrics") or {})]
    for group in groups:
        for name, m in group.items():
            v, ci = fmt(m)
            lines.append(f"| {name} | {v} | {ci} | {m['unit']} |")
    lat = r["latents"]
    lines += [
        "",
        f"Latents: {lat['d_sae']}; dead {lat['dead']} ({100 * lat['dead_frac']:.1f}%); "
        f"dense > 1%: {lat['dense_1pct']}; dense > 10%: {lat['dense_10pct']}.",
    ]
    ds = r["downstream"]
    if ds.get("skipped"):
        lines += ["", f"Downstream fidelity skipped: {ds['skipped']}."]
    elif ds["kind"] == "causal_lm":
        lines += [
            "",
            "ce_recovered uses the zero ablation as its baseline; "
            "ce_recovered_mean_ablation uses the mean ablation.",
        ]
    lines += ["", *(f"![{k}]({p})" for k, p in figs.items())]
    return "\n".join(lines)
