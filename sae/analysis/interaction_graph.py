"""Sparsity and modularity of an interaction graph (Bushnaq et al. 2024, arXiv 2405.10927 /
2405.10928; docs/methods.md#interaction-sparsity and #modularity).

* `sparsity(E)`: Gini, Hoyer, edge participation N_eff = 1/Σp², k_q (fewest edges holding a
  fraction q of the mass) and the mean per-node out-degree participation, on p = E/ΣE with the
  constant node's edges left out.
* `mass_curve(E)`: edge mass kept against edges kept (strongest first).
* `min_kept(loss_at, n, tol)`: the causal measure, the fewest edges (or directions) kept, the rest
  ablated, for the loss to stay within `tol`, by bisection (assumes the loss falls as k grows).
* `ablate_edges`: the forward pass with only the kept edges into each output node.
* `leiden(...)`: Leiden clustering (python-igraph + leidenalg) of the layered graph with rib's
  log-normalised weights, Newman modularity Q at resolution γ, cluster sizes and layer spans.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Edges",
    "edge_mass",
    "sparsity",
    "mass_curve",
    "min_kept",
    "edge_order",
    "ablate_edges",
    "edge_weights",
    "leiden",
]


class Edges(NamedTuple):
    """The edge matrices of one layer pair per basis, with the SAE's node ids: what the
    interaction suite's figures draw (too large for report.json, so not in its results)."""

    E: dict[str, Tensor]
    """basis -> mean edge matrix [downstream directions, upstream nodes], constant nodes first;
    "sae": columns [bias, live latents..., error]."""
    sae_latents: list[int]
    """the live latents' ids in the order of E["sae"]'s columns (empty without an SAE)."""


def edge_mass(E_KoKi: Tensor, skip_const_in: bool, skip_const_out: bool) -> Tensor:
    """The edge matrix without the constant node's row/column (float64)."""
    E = E_KoKi.to(torch.float64)
    return E[int(skip_const_out) :, int(skip_const_in) :]


def _k_q(sorted_desc: Tensor, q: float) -> int:
    c = sorted_desc.cumsum(0)
    return int(torch.searchsorted(c, q * c[-1] * (1 - 1e-12)).item()) + 1


def sparsity(E_KoKi: Tensor, skip_const_in: bool = True, skip_const_out: bool = True) -> dict:
    """§C.4 proxies of one edge matrix [K_out, K_in]; constant-node edges excluded."""
    E = edge_mass(E_KoKi, skip_const_in, skip_const_out).clamp_min(0)
    p = E.flatten()
    N = len(p)
    total = float(p.sum())
    if N == 0 or total <= 0:
        return {"edges": N, "mass": total}
    p = p / total
    asc = p.sort().values
    k = torch.arange(1, N + 1, dtype=torch.float64)
    gini = float(((2 * k - N - 1) * asc).sum() / N)
    l2 = float(p.norm())
    hoyer = (N**0.5 - 1 / l2) / (N**0.5 - 1) if N > 1 else 0.0
    n_eff = 1 / float(p.pow(2).sum())
    desc = asc.flip(0)
    k90, k99 = _k_q(desc, 0.9), _k_q(desc, 0.99)
    # out-degree participation: for each upstream node j, (Σ_i E_ij)² / Σ_i E_ij² / K_out
    col = E.sum(0)
    live = col > 0
    part = col[live].pow(2) / E[:, live].pow(2).sum(0) / E.shape[0]
    return {
        "edges": N,
        "mass": total,
        "gini": gini,
        "hoyer": hoyer,
        "n_eff": n_eff,
        "n_eff_fraction": n_eff / N,
        "k_90": k90,
        "k_90_fraction": k90 / N,
        "k_99": k99,
        "k_99_fraction": k99 / N,
        "out_degree_participation": float(part.mean()) if len(part) else None,
    }


def mass_curve(E_KoKi: Tensor, skip_const_in: bool = True, skip_const_out: bool = True,
               points: int = 60) -> dict[str, list[float]]:  # fmt: skip
    """Fraction of edge mass held by the k strongest edges, at ~`points` log-spaced k."""
    p = edge_mass(E_KoKi, skip_const_in, skip_const_out).flatten().sort(descending=True).values
    N = len(p)
    if N == 0 or float(p.sum()) <= 0:
        return {"k": [], "mass": []}
    c = (p.cumsum(0) / p.sum()).tolist()
    ks = np.unique(np.round(np.geomspace(1, N, points)).astype(int))
    return {"k": ks.tolist(), "mass": [c[k - 1] for k in ks]}


def min_kept(loss_at: Callable[[int], float], n: int, tol: float) -> tuple[int, dict[int, float]]:
    """(smallest k in [0, n] with loss_at(k) ≤ tol, every loss evaluated) by bisection; n when
    even keeping everything misses tol [assumes the loss is non-increasing in k, as in rib]."""
    seen: dict[int, float] = {}

    def ok(k: int) -> bool:
        if k not in seen:
            seen[k] = float(loss_at(k))
        return seen[k] <= tol

    lo, hi = 0, n
    if not ok(hi):
        return n, seen
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo, seen


def edge_order(E_KoKi: Tensor, skip_const_in: bool, skip_const_out: bool) -> Tensor:
    """Flat indices (into E) of the non-constant edges, strongest first."""
    Ko, Ki = E_KoKi.shape
    idx = torch.arange(Ko * Ki).reshape(Ko, Ki)[int(skip_const_out) :, int(skip_const_in) :]
    idx = idx.flatten()
    return idx[E_KoKi.flatten()[idx].argsort(descending=True)]


def keep_mask(E_KoKi: Tensor, k: int, skip_const_in: bool, skip_const_out: bool) -> Tensor:
    """[K_out, K_in] bool: the k strongest edges plus every edge of the constant nodes (free)."""
    Ko, Ki = E_KoKi.shape
    m = torch.zeros(Ko * Ki, dtype=torch.bool)
    m[edge_order(E_KoKi, skip_const_in, skip_const_out)[:k]] = True
    m = m.reshape(Ko, Ki)
    if skip_const_in:
        m[:, 0] = True
    if skip_const_out:
        m[0, :] = True
    return m


def ablate_edges(section_hat: Callable[[Tensor], Tensor], fhat_NKi: Tensor, keep_KoKi: Tensor,
                 chunk: int = 64) -> Tensor:  # fmt: skip
    """Output coordinates with only the kept edges: ĝ_i(f̂ ⊙ keep_i) for every output node i
    (rib's edge ablation: each output sees its kept inputs, the others zeroed). [N, K_out]."""
    Ko = keep_KoKi.shape[0]
    out = []
    for s in range(0, Ko, chunk):
        m = keep_KoKi[s : s + chunk].to(fhat_NKi)  # [c, Ki]
        g = section_hat(fhat_NKi[None] * m[:, None, :])  # [c, N, Ko]
        out.append(g[torch.arange(len(m)), :, torch.arange(s, s + len(m))].T)
    return torch.cat(out, 1)


Norm = Literal["log", "sqrt", "identity"]


def edge_weights(E: Tensor, norm: Norm, eps: float | None) -> Tensor:
    """rib's log norm w = max(0, log10(E/ε)) with ε the smallest kept edge (default: the smallest
    positive edge), or √E, or E itself."""
    E = E.to(torch.float64).clamp_min(0)
    if norm == "sqrt":
        return E.sqrt()
    if norm == "identity":
        return E
    if eps is None:
        pos = E[E > 0]
        eps = float(pos.min()) if len(pos) else 1.0
    return torch.log10(E.clamp_min(1e-300) / eps).clamp_min(0)


def leiden(
    layers: list[int],
    edges: list[Tensor],
    norm: Norm = "log",
    eps: list[float | None] | None = None,
    gamma: float = 0.5,
    const_first: list[bool] | None = None,
    seed: int = 0,
) -> dict:
    """Leiden clusters of the layered graph: node layer li has `layers[li]` nodes and `edges[li]`
    [layers[li+1], layers[li]] joins li to li+1. Constant nodes (node 0 where const_first) are left
    out. Returns membership per layer, Newman Q at γ, non-singleton cluster sizes and spans
    (how many node layers each cluster touches)."""
    import igraph as ig
    import leidenalg

    const_first = const_first or [True] * len(layers)
    eps = eps or [None] * len(edges)
    offsets = np.cumsum([0, *layers])
    src, dst, wts = [], [], []
    for li, E in enumerate(edges):
        W = edge_weights(E, norm, eps[li])
        if const_first[li + 1]:
            W[0, :] = 0
        if const_first[li]:
            W[:, 0] = 0
        o, i = W.nonzero(as_tuple=True)
        src += (offsets[li] + i).tolist()
        dst += (offsets[li + 1] + o).tolist()
        wts += W[o, i].tolist()
    g = ig.Graph(n=int(offsets[-1]), edges=list(zip(src, dst, strict=True)))
    g.es["weight"] = wts
    part = leidenalg.find_partition(
        g, leidenalg.RBConfigurationVertexPartition, weights="weight",
        resolution_parameter=gamma, seed=seed,
    )  # fmt: skip
    member = np.asarray(part.membership)
    q = g.modularity(member.tolist(), weights="weight", resolution=gamma) if wts else 0.0
    drop = {int(offsets[li]) for li in range(len(layers)) if const_first[li]}
    layer_of = np.repeat(np.arange(len(layers)), layers)
    clusters: dict[int, list[int]] = {}
    for v, c in enumerate(member.tolist()):
        if v not in drop and g.strength(v, weights="weight") > 0:
            clusters.setdefault(c, []).append(v)
    multi = [vs for vs in clusters.values() if len(vs) > 1]
    multi.sort(key=len, reverse=True)
    return {
        "gamma": gamma,
        "norm": norm,
        "modularity_q": float(q),
        "n_clusters": len(multi),
        "sizes": [len(vs) for vs in multi],
        "spans": [len(set(layer_of[vs].tolist())) for vs in multi],
        "membership": [member[offsets[li] : offsets[li + 1]].tolist() for li in range(len(layers))],
    }
