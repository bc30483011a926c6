"""The `interaction` suite: on one layer pair (the SAE's stream and the output of the block that
reads it), how sparsely do the neuron basis, PCA, the Local Interaction Basis and the SAE's
latents interact with the next layer? (Bushnaq et al. 2024, arXiv 2405.10927 / 2405.10928;
definitions in docs/methods.md#interaction-basis.)

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite interaction --out reports/ib

Node layers: l = the hook's stream (resid_pre.N or resid_post.N), l+1 = the output of the block
that reads it (`sae.eval.layer.reading_block`). The section is that whole block (attention and
MLP), replayed on any input with `perspective` folding, so single-point gradients are exact
integrated gradients. Downstream basis (fixed for every upstream basis): the centred PCA of l+1,
its top `out_directions` directions plus the constant. Upstream bases: neuron, centred PCA,
centred LIB (M′ towards those downstream coordinates), and the SAE (latents + error node + bias
node). Budgets and the tolerance come from `InteractionConfig` (`--interaction.*`). Ablations are
scored by the model's own downstream loss: next-token CE for causal LMs; encoders (BERT, MiniLM)
have no LM loss in their default head, so there it is the FVU of the final hidden state.
`analyse(batches, sae=None)` runs the same analysis without an SAE.

results:
  reads, tokens (input rows for the moments), window_tokens (windows cut to this), mprime_tokens,
  edge_tokens (input rows for M′ and edges), edge_rows ((window, output position) pairs scored),
  downstream {kind, directions}, mprime {mode: exact|stochastic, sources},
  loss {kind: causal_lm|encoder, name, ablation_tokens, clean (CE in nats; encoders: null)},
  degeneracy: d, rank_gram, activation_degeneracy, rank_mprime, gradient_degeneracy,
       firing (MLP units of the reading block: units, distinct_patterns, redundancy_exact,
       redundancy_near, never_fire) — docs/methods.md#degeneracy
  bases: {neuron|pca|lib: directions, sparsity (edges, gini, hoyer, n_eff(_fraction),
       k_90(_fraction), k_99(_fraction), out_degree_participation), completeness_error,
       edges_needed {tol, k, fraction, losses, smallest_kept}, leiden {gamma, modularity_q,
       n_clusters, sizes, spans}, leiden_sweep {γ: {modularity_q, n_clusters}}}
  lambda: LIB Λ_k (first 100)
  sae (with an SAE): directions (latents active on the scored rows), sparsity, completeness_error,
       error_share, bias_share, alignment {lib|pca|neuron: weighted_mmcs, mmcs, reverse_mmcs,
       null}, phi {r, lib, pca, baseline}
  curves: mass {basis: {k, mass}}, directions {basis: {r, loss}}
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
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
from sae.analysis.interaction_graph import (
    Edges,
    keep_mask,
    leiden,
    mass_curve,
    min_kept,
    sparsity,
)
from sae.analysis.interaction_jacobian import (
    edge_sums,
    ig_rows,
    jacobian_second_moment,
    outside_part,
    perspective,
    sae_edge_sums,
)
from sae.analysis.matching import basis_alignment, subspace_capture
from sae.config import ConfigError
from sae.eval.base import EvalContext, EvalTarget, SuiteResult
from sae.eval.config import InteractionConfig
from sae.eval.layer import BlockCall, block_call, mlp_read, model_of, reading_block
from sae.eval.splice import ModelKind, forward, model_kind, next_token_ce
from sae.eval.stream import window_batches

EXACT_MAX = 1024
"""exact M′ when positions × output nodes ≤ this; otherwise `sources` stochastic ±1 sources."""
GAMMAS = (0.5, 1.0, 2.0)
"""Leiden resolutions reported beside the configured one."""
WINDOWS_PER_CALL = 2


class Batch(NamedTuple):
    call: BlockCall
    keep_BT: Tensor
    downstream: Callable[[Tensor | None], Tensor]
    """the model's output (logits or last hidden state) with the reading block's output shifted
    by dy [B, T, d] (None: clean)."""
    ids_BT: Tensor
    kind: ModelKind


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


def collect(
    model,
    hook: str,
    source,
    max_tokens: int,
    window_tokens: int = 64,
    read: set[int] | None = None,
) -> list[Batch]:
    """Replayable calls of the reading block over held-out windows cut to `window_tokens` tokens,
    until `max_tokens` kept rows are read; `read` collects the windows' global indices."""
    rb = reading_block(model, hook)
    assert rb is not None
    mlp = mlp_read(model, hook)
    extra = [mlp.module] if mlp is not None else []
    point = resolve_hooks(model, [f"resid_post.{rb.index}"])[0]  # the reading block's output
    kind = model_kind(model)

    def downstream(dy_BTD: Tensor | None, ids_BT: Tensor) -> Tensor:
        rep = None if dy_BTD is None else (point, lambda v: v + dy_BTD.to(v))
        return forward(model, ids_BT, replace=rep).out.float()

    out = []
    seen = 0
    # cut below, stop at max_tokens
    for wb in window_batches(source, 1 << 62, WINDOWS_PER_CALL, set() if read is None else read):
        ids, keep = wb.ids_BT[:, :window_tokens], wb.keep_BT[:, :window_tokens].cpu()
        down = partial(downstream, ids_BT=ids)
        out.append(Batch(block_call(model, rb, ids, extra), keep, down, ids, kind))
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


def _positions(T: int, n: int) -> Tensor:
    return torch.linspace(0, T - 1, min(n, T)).round().long().unique()


class DownstreamLoss:
    """The model's loss when the reading block's output is shifted at the kept rows of some
    windows, relative to the clean run (docs/methods.md#interaction-sparsity): the next-token CE
    increase (nats per prediction) for causal LMs; for encoders, which have no LM loss, the FVU
    of the final hidden state Σ‖h_abl − h‖² / Σ‖h − mean h‖² over the kept positions."""

    def __init__(self, batches: list[Batch]):
        self.batches = batches
        self.kind = batches[0].kind
        self.clean = [b.downstream(None) for b in batches]
        self.clean_ce = self._ce(self.clean) if self.kind == "causal_lm" else None
        if self.kind != "causal_lm":
            h = torch.cat(
                [c[b.keep_BT.to(c.device)] for b, c in zip(batches, self.clean, strict=True)]
            )
            self.var = float((h.double() - h.double().mean(0)).pow(2).sum())

    @property
    def name(self) -> str:
        return "next-token CE increase (nats)" if self.kind == "causal_lm" else (
            "FVU of the final hidden state")  # fmt: skip

    def _ce(self, outs: list[Tensor]) -> float:
        tot = sum(
            float(next_token_ce(o, b.ids_BT).sum()) for b, o in zip(self.batches, outs, strict=True)
        )
        return tot / sum(b.ids_BT.shape[0] * (b.ids_BT.shape[1] - 1) for b in self.batches)

    def __call__(self, dy_rows: list[Tensor]) -> float:
        """Loss with the block output's kept rows of batch i shifted by dy_rows[i] [n_kept, d]."""
        outs = []
        for b, dy in zip(self.batches, dy_rows, strict=True):
            dy_BTD = torch.zeros(b.call.y_BTD.shape, dtype=torch.float32)
            dy_BTD[b.keep_BT] = dy.float()
            outs.append(b.downstream(dy_BTD))
        if self.kind == "causal_lm":
            return self._ce(outs) - self.clean_ce
        num = sum(float(((o - c)[b.keep_BT.to(c.device)]).double().pow(2).sum())
                  for b, o, c in zip(self.batches, outs, self.clean, strict=True))  # fmt: skip
        return num / self.var if self.var > 0 else 0.0


class Analysis(NamedTuple):
    results: dict[str, Any]
    """JSON-able: the suite's results in report.json."""
    edges: Edges


def analyse(
    batches: list[Batch], sae=None, seed: int = 0, cfg: InteractionConfig | None = None
) -> Analysis:
    """The whole layer-pair analysis (see the module docstring); `sae=None`: bases only."""
    cfg = cfg or InteractionConfig()
    d = batches[0].call.x_BTD.shape[-1]
    mom_in, mom_out = Moments(d + 1), Moments(batches[0].call.y_BTD.shape[-1] + 1)
    fired = []
    for b in batches:
        mom_in.add(fold(b.call.x_BTD[b.keep_BT]).double())
        mom_out.add(fold(b.call.y_BTD[b.keep_BT]).double())
        fired += [(z[b.keep_BT] > 0).cpu() for z in b.call.extra.values()]
    out = pca_basis(mom_out, centre=True)
    out = _truncate(out, min(out.k, cfg.out_directions + 1))
    C_out = out.C_FK.float()
    T = batches[0].keep_BT.shape[1]
    exact = cfg.sources == 0 or T * out.k <= EXACT_MAX
    gen = torch.Generator().manual_seed(seed)
    Mp = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    n = 0
    for b in _first_rows(batches, cfg.mprime_tokens):
        sec, f = perspective(b.call.call), fold(b.call.x_BTD)
        m, k = jacobian_second_moment(
            sec, f, C_out, b.keep_BT, None if exact else cfg.sources, generator=gen
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
    edge_batches = _first_rows(batches, cfg.edge_tokens)
    for b in edge_batches:
        sec, f = perspective(b.call.call), fold(b.call.x_BTD)
        with torch.no_grad():
            g_hat = sec(f).double() @ out.C_FK
            if sae is not None:
                a = sae.encode(b.call.x_BTD.to(sae.W_dec)).cpu()
                err = b.call.x_BTD - sae.decode(a.to(sae.W_dec)).float().cpu()
        for t in _positions(
            f.shape[1], cfg.edge_positions
        ):  # one output position at a time bounds memory
            t_idx = t[None]
            rows = ig_rows(sec, f, C_out, t_idx)
            # ĝ less what the left-out input positions (BOS, special tokens) contribute: the
            # edges carry the kept positions only, the rows of the moments and M′
            want = g_hat[:, t_idx].permute(1, 2, 0)[:, 1:]  # [t, o, B]
            want = want - outside_part(rows, f, b.keep_BT)[:, 1:]
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
            "sources": None if exact else cfg.sources,
        },
        "degeneracy": deg,
        "lambda": bases["lib"].Lambda_K[:100].tolist(),
        "bases": {},
        "curves": {"mass": {}, "directions": {}},
    }
    abl = _first_rows(batches, cfg.ablation_tokens)
    loss = DownstreamLoss(abl)
    res["loss"] = {"kind": loss.kind, "name": loss.name, "clean": loss.clean_ce,
                   "ablation_tokens": int(sum(int(b.keep_BT.sum()) for b in abl))}  # fmt: skip
    E_mean: dict[str, Tensor] = {}
    for k, basis in bases.items():
        Ek = E_mean[k] = E[k] / rows_n
        r = {"directions": basis.k - 1, "sparsity": sparsity(Ek)}
        r["completeness_error"] = (comp[k][0] / comp[k][1]) ** 0.5
        r["edges_needed"] = _edges_needed(abl, loss, basis, out, Ek, cfg.tol)
        eps = [r["edges_needed"].get("smallest_kept")]
        r["leiden"] = leiden([basis.k, out.k], [Ek], eps=eps, gamma=cfg.gamma, seed=seed)
        del r["leiden"]["membership"]
        r["leiden_sweep"] = {}
        for g in sorted({*GAMMAS, cfg.gamma}):
            ld = leiden([basis.k, out.k], [Ek], eps=eps, gamma=g, seed=seed)
            r["leiden_sweep"][str(g)] = {"modularity_q": ld["modularity_q"],
                                         "n_clusters": ld["n_clusters"]}  # fmt: skip
        res["bases"][k] = r
        res["curves"]["mass"][k] = mass_curve(Ek)
        res["curves"]["directions"][k] = _direction_curve(abl, loss, basis)
    live: list[int] = []
    if sae is not None:
        res["sae"], E_mean["sae"], live = _sae_results(
            E_sae / rows_n, comp["sae"], sae, batches, bases
        )
        res["curves"]["mass"]["sae"] = mass_curve(E_mean["sae"])
    return Analysis(res, Edges(E_mean, live))


def _add_completeness(acc: list[float], got: Tensor, want: Tensor, mask: Tensor) -> None:
    acc[0] += float(((got - want).pow(2) * mask).sum())
    acc[1] += float((want.pow(2) * mask).sum())


def _sae_results(E, comp, sae, batches, bases) -> tuple[dict[str, Any], Tensor, list[int]]:
    """SAE edges (columns reordered [bias, live latents..., error], so the bias node is the free
    constant node), error/bias shares, decoder alignment and subspace capture; the reordered
    edges and the live latents' ids (the figures' node labels)."""
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
    return r, Es, live.tolist()


def _replay(b: Batch, f_BTF: Tensor) -> Tensor:
    """Block output of folded input f̃ (constant 1) in the downstream coordinates, kept rows."""
    with torch.no_grad():
        g = fold(b.call.call(f_BTF[..., 1:].float()))
    return g[b.keep_BT].double()


def _at_kept(b: Batch, f_BTF: Tensor, new_BTF: Tensor) -> Tensor:
    """`new_BTF` at the kept positions, the input `f_BTF` untouched at BOS and special tokens
    (the positions the bases and edges leave out)."""
    return torch.where(b.keep_BT.to(f_BTF.device)[..., None], new_BTF, f_BTF)


def _direction_curve(abl: list[Batch], loss: DownstreamLoss, basis: NodeBasis) -> dict:
    """Downstream loss when the block reads only the top-r directions (by Λ) and the constant
    at the kept positions: the whole block output changes."""
    fs = [fold(b.call.x_BTD).double() for b in abl]
    refs = [_replay(b, f) for b, f in zip(abl, fs, strict=True)]
    order = basis.Lambda_K[1:].argsort(descending=True) + 1
    grid = np.unique(np.round(np.geomspace(1, len(order), 12)).astype(int))
    losses = []
    for r in grid:
        keep = torch.zeros(basis.k, dtype=torch.float64)
        keep[0], keep[order[:r]] = 1, 1
        dys = []
        for b, f, ref in zip(abl, fs, refs, strict=True):
            f_r = _at_kept(b, f, (f @ basis.C_FK * keep) @ basis.Cplus_KF)
            dys.append((_replay(b, f_r) - ref)[:, 1:])
        losses.append(loss(dys))
    return {"r": grid.tolist(), "loss": losses}


def _edges_needed(abl: list[Batch], loss: DownstreamLoss, basis: NodeBasis, out: NodeBasis,
                  E: Tensor, tol: float) -> dict[str, Any]:  # fmt: skip
    """Fewest kept edges (strongest first, constant nodes free, the rest ablated in the forward
    pass at the kept positions: each output node sees only its kept inputs) for the downstream
    loss to rise by ≤ tol: the block output moves by C⁺ᵀ(ĝ_abl − ĝ) in the kept downstream
    directions and the model runs on. Bisection over the mass-curve grid of k (an upper bound at
    that resolution)."""
    fs = [fold(b.call.x_BTD).double() for b in abl]
    fhats = [f @ basis.C_FK for f in fs]
    refs = [_replay(b, f) @ out.C_FK for b, f in zip(abl, fs, strict=True)]
    n_edges = (E.shape[0] - 1) * (E.shape[1] - 1)
    grid = mass_curve(E, points=40)["k"] or [n_edges]

    def at(i: int) -> float:
        if i >= len(grid):
            return 0.0
        keep = keep_mask(E, grid[i], True, True)
        dys = []
        for b, f, fhat, ref in zip(abl, fs, fhats, refs, strict=True):
            cols = [_replay(b, _at_kept(b, f, (fhat * keep[o].double()) @ basis.Cplus_KF))
                    @ out.C_FK[:, o] for o in range(out.k)]  # fmt: skip
            dys.append(((torch.stack(cols, 1) - ref) @ out.Cplus_KF)[:, 1:])
        return loss(dys)

    i, seen = min_kept(at, len(grid), tol)
    k = grid[i] if i < len(grid) else n_edges
    order = E[1:, 1:].flatten().sort(descending=True).values
    return {
        "tol": tol,
        "k": int(k),
        "fraction": k / n_edges,
        "losses": {str(grid[j]): v for j, v in sorted(seen.items()) if j < len(grid)},
        "smallest_kept": float(order[k - 1]) if 0 < k <= len(order) and order[k - 1] > 0 else None,
    }


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    from sae.eval import interaction_plots as iplots

    model = model_of(target)
    rb = reading_block(model, target.hook)
    cfg = ctx.interaction or InteractionConfig()
    batches = collect(model, target.hook, target.source, min(ctx.eval_tokens, cfg.moment_tokens),
                      cfg.window_tokens, target.windows_read)  # fmt: skip
    sae = target.sae.to(batches[0].call.x_BTD.device).eval()
    analysis = analyse(batches, sae, ctx.seed, cfg)
    res = {"reads": rb.why, **analysis.results}
    figs = {}
    for name, draw in iplots.FIGURES.items():
        if draw(ctx.figure_path(target, name), res, analysis.edges, target.name):
            figs[name] = ctx.figure_path(target, name)
    rel = {k: str(p.relative_to(ctx.out)) for k, p in figs.items()}
    return SuiteResult(res, rel, iplots.markdown(res, rel))
