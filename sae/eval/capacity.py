"""The `capacity` suite: how much of the space each learned feature owns (Scherlis et al. 2022,
Elhage et al. 2022; docs/methods.md#capacity-suite), for the SAE decoder and for the model's own MLP
neurons.

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite capacity --out reports/cap

Capacity C_i = (W_i·W_i)² / Σ_j (W_i·W_j)² through the d × d frame operator (never the m × m
Gram): O(m d²) time, O(d²) memory (`sae.analysis.capacity.capacity_summary`).

results:
  tokens: rows scored for the usage E[a_k²]; dead: latents that never fired on them
  sae: capacity_summary(W_dec, E[a²], dead): d_in, n_features, thresholds, neuron_polysemanticity
       (per input coordinate), and two views, `geometric` (decoder rows as they are) and
       `usage_weighted` (rows scaled by √E[a_k²], the headline;
       docs/methods.md#usage-weighted-capacity), each with
       sum_capacity, rank, saturation (ΣC / rank), sum_over_d, null_sum_capacity (random unit
       dictionary, dm/(d + m − 1)), sum_over_null, dims_per_feature, n_monosemantic (C ≥ 0.95),
       n_polysemantic, n_ignored (dead, or norm ≤ 0.1 × median), mean_capacity_live,
       max_residual, histogram; geometric.blocks (count, size_counts, leakage_fraction, largest:
       n, dim, tightness, leakage) unless skipped
  blocks_skipped: why the O(m² d) block search was skipped (m² d / 2 > BLOCK_FLOPS), or null
  neurons: the model's MLP read vectors in the block that reads the SAE's hook (live models;
       `sae.eval.layer.reading_block`: resid_post.N -> block N+1), or {skipped: why}:
       block, reads (e.g. 'block 4 reads resid_post.3'), module, kind, n_neurons, capacity (capacity_summary of the read vectors, geometric
       only), extra (Llama up_proj), polysemanticity: NP_n = (Σ_k u_nk²)² / Σ_k u_nk⁴, the
       effective number of latents neuron n reads, with u_nk = √E[a_k²]·(w_n·d_k) when the SAE
       reads the residual stream the neurons read, or u_nk = √E[a_k²]·(W_dec)_{k,n} when the SAE
       reads the neurons themselves (docs/methods.md#neuron-polysemanticity) [inferred: the first
       form generalises the second to residual SAEs]: {basis, mean, median, max, histogram}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sae.analysis.capacity import capacity_summary, neuron_polysemanticity
from sae.eval import plots
from sae.eval.base import EvalContext, EvalTarget, SuiteResult
from sae.eval.layer import latent_usage, mlp_read, model_of
from sae.eval.stats import histogram
from sae.eval.table import TABLE_FILE, update_latents_table

BLOCK_FLOPS = 2e11
"""largest m² d / 2 for which the pairwise-cosine block search runs (~a minute on 2 cores)."""


def check(target: EvalTarget) -> None:
    """Nothing beyond the runner's checks: the decoder and, for live models, the model suffice."""


def blocks_ok(n: int, d: int) -> tuple[bool, str | None]:
    """(run the block search?, why not) for n features in d dimensions."""
    cost = n * n * d / 2
    if cost <= BLOCK_FLOPS:
        return True, None
    return False, (
        f"the block search compares all {n:,} × {n:,} pairs in d = {d} ({cost:.1e} multiply-adds "
        f"> {BLOCK_FLOPS:.0e}); capacities and the histogram are exact without it"
    )


def read_polysemanticity(
    W_dec_MD: torch.Tensor, mean_sq_M: torch.Tensor, W_HD: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """NP_n with u_nk = √E[a_k²]·(w_n·d_k): effective number of latents read by neuron n [H]."""
    s2 = torch.zeros(W_HD.shape[0], dtype=torch.float64)
    s4 = torch.zeros_like(s2)
    W = W_HD.double()
    for s in range(0, W_dec_MD.shape[0], chunk):
        scale_C = mean_sq_M[s : s + chunk].double().clamp_min(0).sqrt()
        u2_CH = ((W_dec_MD[s : s + chunk].double() @ W.T) * scale_C[:, None]).pow(2)
        s2 += u2_CH.sum(0)
        s4 += u2_CH.pow(2).sum(0)
    return torch.where(s4 > 0, s2.pow(2) / s4.where(s4 > 0, 1.0), 0.0)


def _neurons(target: EvalTarget, W_dec: torch.Tensor, mean_sq: torch.Tensor) -> dict[str, Any]:
    model = model_of(target)
    if model is None:
        return {"skipped": f"activations come from a {target.stream} source; no model is loaded"}
    mlp = mlp_read(model, target.hook)
    if mlp is None:
        return {
            "skipped": f"no block reads hook {target.hook!r} (the last block's output, or not "
            "inside a block) or that block has no known MLP input weight"
        }
    n, d_model = mlp.W_HD.shape
    ok, why = blocks_ok(n, d_model)
    out: dict[str, Any] = {
        "block": mlp.block,
        "reads": f"block {mlp.block} reads {target.hook}",
        "module": mlp.module,
        "kind": mlp.kind,
        "n_neurons": n,
        "capacity": capacity_summary(mlp.W_HD, blocks=ok),
        "blocks_skipped": why,
        "extra": {k: capacity_summary(W, blocks=False) for k, W in mlp.extra.items()},
    }
    d_in = W_dec.shape[1]
    if d_in == d_model:
        np_H, basis = read_polysemanticity(W_dec, mean_sq, mlp.W_HD), "read vectors · decoder"
    elif d_in == n:
        np_H = neuron_polysemanticity(W_dec, mean_sq)
        basis = "decoder coordinates (the SAE reads the neurons)"
    else:
        out["polysemanticity"] = {
            "skipped": f"the SAE's width {d_in} is neither the residual width {d_model} nor the "
            f"MLP width {n}"
        }
        return out
    out["polysemanticity"] = {
        "basis": basis,
        "mean": float(np_H.mean()),
        "median": float(np_H.median()),
        "max": float(np_H.max()),
        "histogram": histogram(np_H, torch.logspace(0, np.log10(max(W_dec.shape[0], 10)), 25)),
    }
    return out


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    usage = latent_usage(target, ctx)
    W_dec = target.sae.W_dec.detach().float().cpu()
    m, d = W_dec.shape
    ok, why = blocks_ok(m, d)
    per: dict[str, torch.Tensor] = {}
    summary = capacity_summary(W_dec, usage.mean_sq_M, usage.dead_M, blocks=ok, per_feature=per)
    write_capacity_columns(ctx.out / target.name / TABLE_FILE, per, m)
    results = {
        "tokens": usage.n,
        "dead": int(usage.dead_M.sum()),
        "sae": summary,
        "blocks_skipped": why,
        "neurons": _neurons(target, W_dec, usage.mean_sq_M),
    }
    hists = {"decoder (geometric)": summary["geometric"]["histogram"]}
    if "usage_weighted" in summary:
        hists["decoder (usage-weighted)"] = summary["usage_weighted"]["histogram"]
    neu = results["neurons"]
    if "capacity" in neu:
        hists["MLP neurons"] = neu["capacity"]["geometric"]["histogram"]
    figs = {"capacity_histogram": ctx.figure_path(target, "capacity_histogram")}
    plots.capacity_histograms(figs["capacity_histogram"], hists, target.name)
    sizes = {}
    if "blocks" in summary["geometric"]:
        sizes["decoder"] = summary["geometric"]["blocks"]["size_counts"]
    if "capacity" in neu and "blocks" in neu["capacity"]["geometric"]:
        sizes["MLP neurons"] = neu["capacity"]["geometric"]["blocks"]["size_counts"]
    if sizes:
        figs["block_sizes"] = ctx.figure_path(target, "block_sizes")
        plots.block_sizes(figs["block_sizes"], sizes, target.name)
    rel = {k: str(p.relative_to(ctx.out)) for k, p in figs.items()}
    return SuiteResult(results, rel, _markdown(results, rel))


CLASS_NAMES = np.array(["ignored", "polysemantic", "monosemantic"], dtype=object)


def write_capacity_columns(path, per: dict[str, torch.Tensor], m: int) -> None:
    """Per-latent capacities, classes and block ids into latents.parquet (docs/methods.md)."""
    cols: dict[str, Any] = {}
    for key, t in per.items():
        if key.startswith("class_"):
            cols[key] = CLASS_NAMES[t.cpu().numpy()]
        else:
            cols[key] = t.cpu().numpy()
    update_latents_table(path, cols, "capacity", m)


def _g(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _markdown(r: dict, figs: dict[str, str]) -> str:
    s = r["sae"]
    views = {f"decoder, {k}": s[k] for k in ("geometric", "usage_weighted") if k in s}
    neu = r["neurons"]
    if "capacity" in neu:
        views[f"MLP neurons ({neu['kind']})"] = neu["capacity"]["geometric"]
        for k, v in neu["extra"].items():
            views[f"MLP neurons ({k})"] = v["geometric"]
    lines = [
        f"Decoder: {s['n_features']:,} features in d = {s['d_in']}; usage E[a²] over "
        f"{r['tokens']:,} tokens ({r['dead']} dead latents).",
        "",
        "| view | ΣC | rank | saturation | ΣC/d | null ΣC | ΣC/null | monosemantic | polysemantic "
        "| ignored | mean C (live) | blocks | largest block (n, dim) |",
        "|---|" + "---|" * 12,
    ]
    for name, v in views.items():
        b = v.get("blocks")
        largest = f"{b['largest'][0]['n']}, {b['largest'][0]['dim']}" if b and b["largest"] else ""
        cells = [
            _g(v["sum_capacity"]), _g(v["rank"]), _g(v["saturation"]), _g(v["sum_over_d"]),
            _g(v["null_sum_capacity"]), _g(v["sum_over_null"]), _g(v["n_monosemantic"]),
            _g(v["n_polysemantic"]), _g(v["n_ignored"]), _g(v["mean_capacity_live"]),
            _g(b["count"]) if b else "—", largest,
        ]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Blocks (|cos| > 3/√d components) are computed for the geometric views only."]
    if r["blocks_skipped"]:
        lines += ["", f"Decoder block structure skipped: {r['blocks_skipped']}."]
    if neu.get("blocks_skipped"):
        lines += ["", f"MLP neuron block structure skipped: {neu['blocks_skipped']}."]
    if "skipped" in neu:
        lines += ["", f"MLP neurons skipped: {neu['skipped']}."]
    else:
        p = neu["polysemanticity"]
        if "skipped" in p:
            lines += ["", f"Neuron polysemanticity skipped: {p['skipped']}."]
        else:
            lines += [
                "",
                f"Neuron polysemanticity ({neu['reads']}; {neu['n_neurons']} neurons, "
                f"{p['basis']}): effective latents per neuron mean {p['mean']:.3g}, median "
                f"{p['median']:.3g}, max {p['max']:.3g}.",
            ]
    lines += ["", *(f"![{k}]({p})" for k, p in figs.items())]
    return "\n".join(lines)
