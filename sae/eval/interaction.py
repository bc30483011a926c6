"""The `interaction` suite: on one layer pair (the SAE's stream and the output of the block that
reads it), how sparsely do the neuron basis, PCA, the Local Interaction Basis and the SAE's
latents interact with the next layer? (Bushnaq et al. 2024, arXiv 2405.10927 / 2405.10928;
definitions in docs/methods.md#interaction-basis.)

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite interaction --out reports/ib

Node layers: l = the hook's stream (resid_pre.N or resid_post.N), l+1 = the output of the block
that reads it (`sae.eval.layer.reading_block`). The section is that whole block (attention and
MLP), replayed on any input with `perspective` folding, so single-point gradients are exact
integrated gradients. Downstream basis (fixed for every upstream basis): the centred PCA of l+1,
its top OUT_DIRECTIONS directions plus the constant. Upstream bases: neuron, centred PCA, centred
LIB (M′ towards those downstream coordinates), and the SAE (latents + error node + bias node).
`analyse(batches, sae=None)` runs the same analysis without an SAE.

results:
  reads, tokens (input rows for the moments), window_tokens (windows cut to this), mprime_tokens,
  edge_tokens (input rows for M′ and edges), edge_rows ((window, output position) pairs scored),
  downstream {kind, directions}, mprime {mode: exact|stochastic, sources},
  degeneracy: d, rank_gram, activation_degeneracy, rank_mprime, gradient_degeneracy,
       firing (MLP units of the reading block: units, distinct_patterns, redundancy_exact,
       redundancy_near, never_fire) — docs/methods.md#degeneracy
  bases: {neuron|pca|lib: directions, sparsity (edges, gini, hoyer, n_eff(_fraction),
       k_90(_fraction), k_99(_fraction), out_degree_participation), completeness_error,
       edges_needed {tol, k, fraction, losses, smallest_kept}, leiden {modularity_q, n_clusters,
       sizes, spans}}
  lambda: LIB Λ_k (first 100)
  sae (with an SAE): directions (latents active on the scored rows), sparsity, completeness_error,
       error_share, bias_share, alignment {lib|pca|neuron: weighted_mmcs, mmcs, reverse_mmcs,
       null}, phi {r, lib, pca, baseline}
  curves: mass {basis: {k, mass}}, directions {basis: {r, fvu}}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae.activations.capture import hook_aliases, resolve_hooks
from sae.analysis.interaction_basis import (
    Moments,
    NodeBasis,
    degeneracy,
    firing_redundancy,
    fold,
    lib_basis,
    neuron_basis,
    pca_basis,
)
from sae.analysis.interaction_graph import keep_mask, leiden, mass_curve, min_kept, sparsity
from sae.analysis.interaction_jacobian import (
    edge_sums,
    ig_rows,
    jacobian_second_moment,
    perspective,
    sae_edge_sums,
)
from sae.analysis.matching import basis_alignment, subspace_capture
from sae.config import ConfigError
from sae.eval.base import EvalContext, EvalTarget, SuiteResult
from sae.eval.layer import BlockCall, block_call, mlp_read, model_of, reading_block
from sae.eval.stream import window_batches

WINDOW_TOKENS = 64
"""windows are cut to their first WINDOW_TOKENS tokens: every VJP costs a block pass over them."""
MAX_TOKENS = 4096
"""input rows for the moments (Grams, PCA, firing patterns); fewer when --eval-tokens is."""
MPRIME_TOKENS = 2048
"""input rows (the first windows) for M′."""
EDGE_TOKENS = 256
"""input rows (the first windows) for the edges: n_positions × (OUT_DIRECTIONS + 1) VJPs/window."""
OUT_DIRECTIONS = 64
"""downstream PCA directions kept (plus the constant): edges cost one VJP per output node."""
EDGE_POSITIONS = 8
"""output positions per window whose edges are scored (E is a mean over (window, position))."""
EXACT_MAX = 1024
"""exact M′ when positions × output nodes ≤ this; otherwise SOURCES stochastic ±1 sources."""
SOURCES = 16
ABLATION_TOL = 0.01
"""edges needed: fewest kept edges for the next layer's FVU (kept downstream coords) ≤ this."""
GAMMA = 0.5
"""Leiden resolution (the LIB paper's mod-add plots)."""
WINDOWS_PER_CALL = 2


class Batch(NamedTuple):
    call: BlockCall
    keep_BT: Tensor


def check(target: EvalTarget) -> None:
    """The suite runs the model: live activations and a hook that a block reads."""
    if target.stream != "live":
        raise ConfigError(
            f"suite 'interaction' needs the SAE's model (it differentiates the block that reads "
            f"hook {target.hook!r}), but {target.name!r} is scored on {target.stream} activations; "
            "drop --activations."
        )
    model = model_of(target)
    kinds = {(p.module, p.io): k.rsplit(".", 1)[0] for k, p in hook_aliases(model).items()}
    point = resolve_hooks(model, [target.hook])[0]
    kind = kinds.get((point.module, point.io))
    if kind not in ("resid_pre", "resid_post") or reading_block(model, target.hook) is None:
        raise ConfigError(
            f"suite 'interaction' needs a residual-stream hook read by a later block "
            f"(resid_pre.N, or resid_post.N below the last layer); {target.name!r} reads "
            f"{target.hook!r}."
        )


def collect(model, hook: str, source, max_tokens: int) -> list[Batch]:
    """Replayable calls of the reading block over held-out windows cut to WINDOW_TOKENS tokens,
    until `max_tokens` kept rows are read."""
    rb = reading_block(model, hook)
    assert rb is not None
    mlp = mlp_read(model, hook)
    extra = [mlp.module] if mlp is not None else []
    out = []
    seen = 0
    for wb in window_batches(source, 1 << 62, WINDOWS_PER_CALL):  # cut below, stop at max_tokens
        ids, keep = wb.ids_BT[:, :WINDOW_TOKENS], wb.keep_BT[:, :WINDOW_TOKENS].cpu()
        out.append(Batch(block_call(model, rb, ids, extra), keep))
        seen += int(keep.sum())
        if seen >= max_tokens:
            break
    return out


def _first_rows(batches: list[Batch], rows: int) -> list[Batch]:
    """The first calls holding at least `rows` kept rows."""
    out, seen = [], 0
    for b in batches:
        out.append(b)
        seen += int(b.keep_BT.sum())
        if seen >= rows:
            break
    return out


def _truncate(b: NodeBasis, k: int) -> NodeBasis:
    return NodeBasis(b.kind, b.C_FK[:, :k], b.Cplus_KF[:k], b.Lambda_K[:k], b.const_first)


def _positions(T: int) -> Tensor:
    return torch.linspace(0, T - 1, min(EDGE_POSITIONS, T)).round().long().unique()


def _fvu(g_hat: Tensor, ref: Tensor) -> float:
    """Σ(ĝ_abl − ĝ)² / Σ(ĝ − mean ĝ)² over the non-constant downstream coordinates."""
    ref = ref[:, 1:]
    return float((g_hat[:, 1:] - ref).pow(2).sum() / (ref - ref.mean(0)).pow(2).sum())


def analyse(batches: list[Batch], sae=None, seed: int = 0) -> dict[str, Any]:
    """The whole layer-pair analysis (see the module docstring); `sae=None`: bases only."""
    d = batches[0].call.x_BTD.shape[-1]
    mom_in, mom_out = Moments(d + 1), Moments(batches[0].call.y_BTD.shape[-1] + 1)
    fired = []
    for b in batches:
        mom_in.add(fold(b.call.x_BTD[b.keep_BT]).double())
        mom_out.add(fold(b.call.y_BTD[b.keep_BT]).double())
        fired += [(z[b.keep_BT] > 0).cpu() for z in b.call.extra.values()]
    out = pca_basis(mom_out, centre=True)
    out = _truncate(out, min(out.k, OUT_DIRECTIONS + 1))
    C_out = out.C_FK.float()
    T = batches[0].keep_BT.shape[1]
    exact = T * out.k <= EXACT_MAX
    gen = torch.Generator().manual_seed(seed)
    Mp = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    n = 0
    for b in _first_rows(batches, MPRIME_TOKENS):
        sec, f = perspective(b.call.call), fold(b.call.x_BTD)
        m, k = jacobian_second_moment(
            sec, f, C_out, b.keep_BT, None if exact else SOURCES, generator=gen
        )
        Mp, n = Mp + m, n + k
    Mp /= n
    bases = {
        "neuron": neuron_basis(d + 1, mom_in.gram),
        "pca": pca_basis(mom_in, centre=True),
        "lib": lib_basis(mom_in, Mp, centre=True),
    }
    deg = degeneracy(mom_in.gram, Mp)._asdict()
    deg["firing"] = firing_redundancy(torch.cat(fired)) if fired else None
    E = {k: torch.zeros(out.k, v.k, dtype=torch.float64) for k, v in bases.items()}
    comp = {k: [0.0, 0.0] for k in [*bases, "sae"]}
    m_sae = sae.cfg.d_sae if sae is not None else 0
    E_sae = torch.zeros(out.k, m_sae + 2, dtype=torch.float64)
    rows_n = 0
    edge_batches = _first_rows(batches, EDGE_TOKENS)
    for b in edge_batches:
        sec, f = perspective(b.call.call), fold(b.call.x_BTD)
        with torch.no_grad():
            g_hat = sec(f).double() @ out.C_FK
            if sae is not None:
                a = sae.encode(b.call.x_BTD.to(sae.W_dec)).cpu()
                err = b.call.x_BTD - sae.decode(a.to(sae.W_dec)).float().cpu()
        for t in _positions(f.shape[1]):  # one output position at a time bounds memory
            t_idx = t[None]
            rows = ig_rows(sec, f, C_out, t_idx)
            want = g_hat[:, t_idx].permute(1, 2, 0)[:, 1:]  # [t, o, B]
            mask = b.keep_BT[:, t_idx].T[:, None, :].double()
            for k, basis in bases.items():
                es = edge_sums(rows, f, basis, t_idx, b.keep_BT)
                E[k] += es.E_KoKi
                _add_completeness(comp[k], es.A_tKoBKi[:, 1:].sum(-1), want, mask)
            if sae is not None:
                W, bd = sae.W_dec.detach().cpu(), sae.b_dec.detach().cpu()
                es = sae_edge_sums(rows, a, W, err, bd, t_idx, b.keep_BT)
                E_sae += es.E_KoKi
                _add_completeness(comp["sae"], es.A_tKoBKi[:, 1:].sum(-1), want, mask)
            rows_n += es.n
    res: dict[str, Any] = {
        "tokens": mom_in.n,
        "window_tokens": T,
        "mprime_tokens": n,
        "edge_tokens": int(sum(int(b.keep_BT.sum()) for b in edge_batches)),
        "edge_rows": rows_n,
        "downstream": {"kind": "centred PCA of the block output", "directions": out.k - 1},
        "mprime": {
            "mode": "exact" if exact else "stochastic",
            "sources": None if exact else SOURCES,
        },
        "degeneracy": deg,
        "lambda": bases["lib"].Lambda_K[:100].tolist(),
        "bases": {},
        "curves": {"mass": {}, "directions": {}},
    }
    first = batches[0]
    res["_E"] = {}
    for k, basis in bases.items():
        Ek = res["_E"][k] = E[k] / rows_n
        r = {"directions": basis.k - 1, "sparsity": sparsity(Ek)}
        r["completeness_error"] = (comp[k][0] / comp[k][1]) ** 0.5
        r["edges_needed"] = _edges_needed(first, basis, out, Ek)
        eps = r["edges_needed"].get("smallest_kept")
        r["leiden"] = leiden([basis.k, out.k], [Ek], eps=[eps], gamma=GAMMA, seed=seed)
        del r["leiden"]["membership"]
        res["bases"][k] = r
        res["curves"]["mass"][k] = mass_curve(Ek)
        res["curves"]["directions"][k] = _direction_curve(first, basis, out)
    if sae is not None:
        sae_res, res["_E"]["sae"] = _sae_results(E_sae / rows_n, comp["sae"], sae, batches, bases)
        res |= sae_res
        res["curves"]["mass"]["sae"] = mass_curve(res["_E"]["sae"])
    return res


def _add_completeness(acc: list[float], got: Tensor, want: Tensor, mask: Tensor) -> None:
    acc[0] += float(((got - want).pow(2) * mask).sum())
    acc[1] += float((want.pow(2) * mask).sum())


def _sae_results(E, comp, sae, batches, bases) -> tuple[dict[str, Any], Tensor]:
    """SAE edges (columns reordered [bias, live latents..., error], so the bias node is the free
    constant node), error/bias shares, decoder alignment and subspace capture."""
    m = sae.cfg.d_sae
    live = (E[:, :m].sum(0) > 0).nonzero().flatten()
    Es = torch.cat([E[:, m + 1 :], E[:, live], E[:, m : m + 1]], 1)
    total = float(E[1:].sum())
    usage = torch.zeros(m, dtype=torch.float64)
    rows = 0
    with torch.no_grad():
        for b in batches:
            a = sae.encode(b.call.x_BTD[b.keep_BT].to(sae.W_dec)).double().cpu()
            usage += a.pow(2).sum(0)
            rows += len(a)
    usage /= max(rows, 1)
    r = {
        "directions": int(len(live)),
        "sparsity": sparsity(Es),
        "completeness_error": (comp[0] / comp[1]) ** 0.5,
        "error_share": float(E[1:, m].sum()) / total if total > 0 else None,
        "bias_share": float(E[1:, m + 1].sum()) / total if total > 0 else None,
    }
    W = sae.W_dec.detach().double().cpu()
    fired = usage > 0
    al, phi = {}, {}
    for k in ("lib", "pca", "neuron"):
        B_KD = bases[k].Cplus_KF[1:, 1:][: W.shape[1]]
        a = basis_alignment(W[fired], B_KD, usage[fired])
        al[k] = {"weighted_mmcs": a.weighted_mmcs, "mmcs": a.mmcs,
                 "reverse_mmcs": a.reverse_mmcs, "null": a.null}  # fmt: skip
        if k != "neuron":
            phi[k] = subspace_capture(W[fired], B_KD, usage[fired])
    K = min(len(p.phi_R) for p in phi.values())
    grid = np.unique(np.round(np.geomspace(1, K, 30)).astype(int))
    curves = {"r": grid.tolist(), "baseline": phi["pca"].baseline_R[grid - 1].tolist()}
    curves |= {k: p.phi_R[grid - 1].tolist() for k, p in phi.items()}
    r["alignment"], r["phi"] = al, curves
    return {"sae": r}, Es


def _replay(b: Batch, f_BTF: Tensor) -> Tensor:
    """Block output of folded input f̃ (constant 1) in the downstream coordinates, kept rows."""
    with torch.no_grad():
        g = fold(b.call.call(f_BTF[..., 1:].float()))
    return g[b.keep_BT].double()


def _direction_curve(b: Batch, basis: NodeBasis, out: NodeBasis) -> dict[str, list]:
    """Next layer's FVU (kept downstream coords) when only the top-r directions (by Λ) are kept."""
    f = fold(b.call.x_BTD).double()
    ref = _replay(b, f) @ out.C_FK
    fhat = f @ basis.C_FK
    order = basis.Lambda_K[1:].argsort(descending=True) + 1
    grid = np.unique(np.round(np.geomspace(1, len(order), 12)).astype(int))
    fvu = []
    for r in grid:
        keep = torch.zeros(basis.k, dtype=torch.float64)
        keep[0], keep[order[:r]] = 1, 1
        fvu.append(_fvu(_replay(b, (fhat * keep) @ basis.Cplus_KF) @ out.C_FK, ref))
    return {"r": grid.tolist(), "fvu": fvu}


def _edges_needed(b: Batch, basis: NodeBasis, out: NodeBasis, E: Tensor) -> dict[str, Any]:
    """Fewest kept edges (strongest first, constant nodes free, the rest ablated in the forward
    pass: each output node sees only its kept inputs) for FVU ≤ ABLATION_TOL on the first call's
    windows; bisection over the mass-curve grid of k (an upper bound at that resolution)."""
    f = fold(b.call.x_BTD).double()
    fhat = f @ basis.C_FK
    ref = _replay(b, f) @ out.C_FK
    n_edges = (E.shape[0] - 1) * (E.shape[1] - 1)
    grid = mass_curve(E, points=40)["k"] or [n_edges]

    def loss(i: int) -> float:
        if i >= len(grid):
            return 0.0
        keep = keep_mask(E, grid[i], True, True)
        cols = [_replay(b, (fhat * keep[o].double()) @ basis.Cplus_KF) @ out.C_FK[:, o]
                for o in range(out.k)]  # fmt: skip
        return _fvu(torch.stack(cols, 1), ref)

    i, seen = min_kept(loss, len(grid), ABLATION_TOL)
    k = grid[i] if i < len(grid) else n_edges
    order = E[1:, 1:].flatten().sort(descending=True).values
    return {
        "tol": ABLATION_TOL,
        "k": int(k),
        "fraction": k / n_edges,
        "losses": {str(grid[j]): v for j, v in sorted(seen.items()) if j < len(grid)},
        "smallest_kept": float(order[k - 1]) if 0 < k <= len(order) and order[k - 1] > 0 else None,
    }


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    from sae.eval import interaction_plots as iplots

    model = model_of(target)
    rb = reading_block(model, target.hook)
    batches = collect(model, target.hook, target.source, min(ctx.eval_tokens, MAX_TOKENS))
    sae = target.sae.to(batches[0].call.x_BTD.device).eval()
    res = analyse(batches, sae, ctx.seed)
    E = res.pop("_E")
    res = {"reads": rb.why, **res}
    figs = {}
    for name, draw in iplots.FIGURES.items():
        if draw(ctx.figure_path(target, name), res, E, target.name):
            figs[name] = ctx.figure_path(target, name)
    rel = {k: str(p.relative_to(ctx.out)) for k, p in figs.items()}
    return SuiteResult(res, rel, iplots.markdown(res, rel))
