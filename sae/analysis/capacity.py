"""Per-feature capacity of a dictionary (Scherlis et al. 2022, Elhage et al. 2022;
docs/methods.md#capacity).

Convention: a dictionary ``W_ND`` holds one feature per **row** (N features in R^D), the layout of
``W_dec [d_sae, d_in]`` and of an MLP input weight ``[d_mlp, d_model]`` (whose rows are the
neurons' read vectors). Papers often write the transpose, W ∈ R^{d×N}.

Capacity C_i = G_ii² / (G²)_ii with G = W Wᵀ (N×N here) is computed through the d×d frame
operator F = Wᵀ W, because (G²)_ii = W_i F W_iᵀ: O(N d²) time, O(d² + chunk·d) memory,
fp64 accumulation. The N×N Gram is never formed.

    from sae.analysis.capacity import capacity_summary
    report = capacity_summary(sae.W_dec, mean_sq_act_N=latent_sq_mean, dead_N=dead)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

__all__ = [
    "FeatureCapacity",
    "FeatureClasses",
    "BlockStructure",
    "frame_operator",
    "feature_capacity",
    "capacity_null",
    "classify_features",
    "block_structure",
    "neuron_polysemanticity",
    "capacity_summary",
]


class FeatureCapacity(NamedTuple):
    capacity_N: Tensor  # C_i ∈ [0, 1], fp64; 0 for a zero row
    rayleigh_N: Tensor  # ρ_i = W_i F W_iᵀ / ‖W_i‖²
    residual_N: Tensor  # res_i = ‖F W_i − ρ_i W_i‖ / ‖F W_i‖; 0 iff W_i is an eigenvector of F
    sq_norm_N: Tensor  # ‖W_i‖²
    interference_N: Tensor  # (G²)_ii = Σ_j (W_i·W_j)² = W_i F W_iᵀ
    frame_eigvals_D: Tensor  # eigenvalues of F, descending, clipped at 0
    rank: int  # numerical rank of W (relative tolerance on the eigenvalues of F)


class FeatureClasses(NamedTuple):
    monosemantic_N: Tensor  # C_i ≥ 1 − ε and not ignored
    polysemantic_N: Tensor  # C_i < 1 − ε and not ignored
    ignored_N: Tensor  # ‖W_i‖ ≤ τ_norm · median ‖W‖, or a dead latent


class BlockStructure(NamedTuple):
    label_N: Tensor  # block index per feature, −1 for excluded features
    size_B: Tensor  # features per block, blocks sorted by size descending
    dim_B: Tensor  # rank(W_b)
    tightness_B: Tensor  # PR(eig(W_bᵀW_b)) / dim_b, 1 = tight frame
    leakage_B: Tensor  # sqrt(Σ_{b'≠b} ‖W_b W_b'ᵀ‖_F²), interference with everything outside b;
    # computed as ‖W_b Wᵀ‖_F² − ‖W_b W_bᵀ‖_F² without a second O(N² d) pass, so its floor is
    # ≈ √ε_fp64 · ‖W_b‖² (about 1e-8 relative); leakage_fraction (squared) has no such floor.
    leakage_fraction: float  # Σ_b leakage_b² / ‖G‖_F², off-block-diagonal Gram mass [inferred]


def _rank_rtol(dtype: torch.dtype, n: int, d: int) -> float:
    # docs/methods.md#numerics uses 1e-12 relative in fp64. The eigenvalues of F are squared
    # singular values, so a low-precision input needs the square of numpy's matrix_rank tolerance
    # (max(n,d)·eps).
    return max(1e-12, (max(n, d) * torch.finfo(dtype).eps) ** 2)


def _scaled_rows(W_ND: Tensor, scale_N: Tensor | None, s: int, chunk_size: int) -> Tensor:
    W_CD = W_ND[s : s + chunk_size].to(torch.float64)
    return W_CD if scale_N is None else W_CD * scale_N[s : s + chunk_size, None].to(W_CD.device)


def _usage_scale(mean_sq_act_N: Tensor | None, n: int) -> Tensor | None:
    if mean_sq_act_N is None:
        return None
    if mean_sq_act_N.shape != (n,):
        raise ValueError(f"mean_sq_act_N has shape {tuple(mean_sq_act_N.shape)}; need ({n},).")
    return mean_sq_act_N.to(torch.float64).clamp_min(0).sqrt()  # W_i ← √E[a_i²]·d_i


def frame_operator(
    W_ND: Float[Tensor, "n d"],
    mean_sq_act_N: Float[Tensor, " n"] | None = None,
    chunk_size: int = 4096,
) -> Float[Tensor, "d d"]:
    """F = Σ_i W_iᵀ W_i (d×d) accumulated in fp64 over chunks of rows (docs/methods.md#capacity)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size is {chunk_size}; it must be a positive integer.")
    n, d = W_ND.shape
    scale_N = _usage_scale(mean_sq_act_N, n)
    F_DD = torch.zeros(d, d, dtype=torch.float64, device=W_ND.device)
    for s in range(0, n, chunk_size):
        W_CD = _scaled_rows(W_ND, scale_N, s, chunk_size)
        F_DD += W_CD.T @ W_CD
    return F_DD


def feature_capacity(
    W_ND: Float[Tensor, "n d"],
    mean_sq_act_N: Float[Tensor, " n"] | None = None,
    chunk_size: int = 4096,
) -> FeatureCapacity:
    """Capacity, Rayleigh quotient and localisation residual of every row of ``W_ND``
    (docs/methods.md#capacity).

    With ``mean_sq_act_N`` (E[a_i²] per latent) the rows are first scaled by √E[a_i²]: the
    usage-weighted capacity (docs/methods.md#usage-weighted-capacity). Scaling happens chunk by
    chunk, so no copy of W is made. Two passes over W: one for F, one for the per-feature quadratic
    forms.
    """
    n, d = W_ND.shape
    scale_N = _usage_scale(mean_sq_act_N, n)
    F_DD = frame_operator(W_ND, mean_sq_act_N, chunk_size)

    parts: list[tuple[Tensor, ...]] = []
    for s in range(0, n, chunk_size):
        W_CD = _scaled_rows(W_ND, scale_N, s, chunk_size)
        FW_CD = W_CD @ F_DD  # F symmetric, so row i is (F W_iᵀ)ᵀ
        sq_norm_C = (W_CD * W_CD).sum(1)
        den_C = (FW_CD * W_CD).sum(1)  # (G²)_ii
        live_C = sq_norm_C > 0
        cap_C = torch.where(live_C, sq_norm_C**2 / den_C.where(live_C, 1.0), 0.0)
        rho_C = torch.where(live_C, den_C / sq_norm_C.where(live_C, 1.0), 0.0)
        fw_norm_C = FW_CD.norm(dim=1)
        res_C = (FW_CD - rho_C[:, None] * W_CD).norm(dim=1)
        res_C = torch.where(live_C, res_C / fw_norm_C.where(live_C, 1.0), 0.0)
        parts.append((cap_C, rho_C, res_C, sq_norm_C, den_C))
    cap_N, rho_N, res_N, sq_norm_N, den_N = (torch.cat(p) for p in zip(*parts, strict=True))

    eig_D = torch.linalg.eigvalsh((F_DD + F_DD.T) / 2).flip(0).clamp_min(0)
    rtol = _rank_rtol(W_ND.dtype, n, d)
    rank = int((eig_D > rtol * eig_D[0]).sum()) if eig_D[0] > 0 else 0
    return FeatureCapacity(cap_N, rho_N, res_N, sq_norm_N, den_N, eig_D, rank)


def capacity_null(d_in: int, n_features: int) -> float:
    """Σ C of a random unit dictionary: d·m / (d + m − 1)
    (docs/methods.md#saturation-and-the-random-null)."""
    return d_in * n_features / (d_in + n_features - 1)


def classify_features(
    cap: FeatureCapacity,
    dead_N: Bool[Tensor, " n"] | None = None,
    eps: float = 0.05,
    tau_norm: float = 0.1,
) -> FeatureClasses:
    """Monosemantic / polysemantic / ignored (docs/methods.md#feature-classes;
    ε = 0.05, τ_norm = 0.1 are project choices)."""
    norm_N = cap.sq_norm_N.sqrt()
    ignored_N = norm_N <= tau_norm * norm_N.median()
    if dead_N is not None:
        ignored_N = ignored_N | dead_N.to(device=norm_N.device, dtype=torch.bool)
    mono_N = ~ignored_N & (cap.capacity_N >= 1 - eps)
    return FeatureClasses(mono_N, ~ignored_N & ~mono_N, ignored_N)


def _components(W_ND: Tensor, tau: float, exclude_N: Tensor, chunk_size: int) -> np.ndarray:
    """Connected components of the graph |cos(W_i, W_j)| > τ, found tile by tile
    (docs/methods.md#blocks).

    Only tiles on or above the diagonal are computed (the graph is symmetric), each of
    chunk × chunk entries, so memory is O(chunk² + chunk·d) and the time O(N² d / 2). Union is
    incremental: after each row chunk, its edges plus an edge from every node to its current
    component representative go through scipy, so memory stays O(N + edges of one row chunk).
    """
    n = W_ND.shape[0]
    dtype = torch.promote_types(W_ND.dtype, torch.float32)
    norm_N = torch.cat(
        [W_ND[s : s + chunk_size].to(dtype).norm(dim=1) for s in range(0, n, chunk_size)]
    )
    keep_N = (norm_N > 0) & ~exclude_N.to(norm_N.device)
    inv_N = torch.where(keep_N, 1 / norm_N.where(keep_N, 1.0), 0.0)
    rep_N = np.arange(n)
    for a0 in range(0, n, chunk_size):
        a_CD = W_ND[a0 : a0 + chunk_size].to(dtype) * inv_N[a0 : a0 + chunk_size, None]
        src, dst = [], []
        for b0 in range(a0, n, chunk_size):
            b_CD = W_ND[b0 : b0 + chunk_size].to(dtype) * inv_N[b0 : b0 + chunk_size, None]
            hit_CC = (a_CD @ b_CD.T).abs() > tau
            if b0 == a0:
                hit_CC = hit_CC.triu(diagonal=1)
            i, j = torch.nonzero(hit_CC, as_tuple=True)
            src.append(i.cpu().numpy() + a0)
            dst.append(j.cpu().numpy() + b0)
        if sum(len(x) for x in src) == 0:
            continue
        src = np.concatenate([*src, np.arange(n)])
        dst = np.concatenate([*dst, rep_N])
        graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
        _, comp_N = connected_components(graph, directed=False)
        first = np.full(comp_N.max() + 1, n)
        np.minimum.at(first, comp_N, np.arange(n))
        rep_N = first[comp_N]
    return rep_N


def block_structure(
    W_ND: Float[Tensor, "n d"],
    tau: float | None = None,
    exclude_N: Bool[Tensor, " n"] | None = None,
    cap: FeatureCapacity | None = None,
    chunk_size: int = 2048,
) -> BlockStructure:
    """Blocks = connected components of |cos(W_i, W_j)| > τ among non-excluded features
    (docs/methods.md#blocks).

    τ defaults to 3/√d, the noise scale of random cosines (trained SAEs); use τ = 1e-6 for exact
    toy solutions. Cost O(N² d / 2) for the neighbour search (tiled, never N×N in memory) plus
    Σ_b min(n_b, d)³ for the per-block spectra. Excluded (ignored) features get label −1 but still
    count in the leakage of the blocks they overlap. [inferred] The per-block leakage aggregates the
    pairwise ‖W_bᵀW_b'‖_F over all b' ≠ b, and leakage_fraction normalises by ‖G‖_F².
    """
    n, d = W_ND.shape
    tau = 3 / d**0.5 if tau is None else tau
    exclude_N = torch.zeros(n, dtype=torch.bool) if exclude_N is None else exclude_N.cpu()
    cap = feature_capacity(W_ND) if cap is None else cap
    rep_N = _components(W_ND, tau, exclude_N, chunk_size)
    rep_N[exclude_N.numpy()] = -1
    reps, inverse, counts = np.unique(rep_N, return_inverse=True, return_counts=True)
    keep = reps >= 0
    order = np.argsort(-counts[keep], kind="stable")
    block_of_rep = np.full(len(reps), -1)
    block_of_rep[np.flatnonzero(keep)[order]] = np.arange(keep.sum())
    label = block_of_rep[inverse]

    size_B = counts[keep][order]
    nb = len(size_B)
    dim_B, tight_B, within_B = np.zeros(nb, dtype=np.int64), np.ones(nb), np.zeros(nb)
    den = cap.interference_N.cpu().numpy()
    sq_norm = cap.sq_norm_N.cpu().numpy()
    feat = np.flatnonzero(label >= 0)
    feat = feat[np.argsort(label[feat], kind="stable")]  # members of block b are contiguous
    start_B = np.concatenate([[0], np.cumsum(size_B)])
    leak_sq_B = np.bincount(label[feat], weights=den[feat], minlength=nb)  # ‖W_b Wᵀ‖_F²
    # Singletons in closed form: W_bᵀW_b has the single eigenvalue ‖W_i‖².
    singles = size_B == 1
    s_idx = feat[start_B[:-1][singles]]
    dim_B[singles] = sq_norm[s_idx] > 0
    within_B[singles] = sq_norm[s_idx] ** 2
    rtol = _rank_rtol(W_ND.dtype, n, d)
    for b in np.flatnonzero(~singles):
        idx = torch.from_numpy(feat[start_B[b] : start_B[b + 1]])
        W_bD = W_ND[idx.to(W_ND.device)].to(torch.float64)
        small = W_bD @ W_bD.T if W_bD.shape[0] <= d else W_bD.T @ W_bD  # same nonzero spectrum
        lam = torch.linalg.eigvalsh((small + small.T) / 2).clamp_min(0).cpu().numpy()
        rank = int((lam > rtol * lam.max()).sum()) if lam.max() > 0 else 0
        dim_B[b] = rank
        within_B[b] = (lam**2).sum()
        tight_B[b] = (lam.sum() ** 2 / within_B[b]) / rank if rank else 1.0
    leak_sq_B = np.clip(leak_sq_B - within_B, 0, None)
    total = float(den.sum())
    return BlockStructure(
        label_N=torch.from_numpy(label),
        size_B=torch.from_numpy(size_B),
        dim_B=torch.from_numpy(dim_B),
        tightness_B=torch.from_numpy(tight_B),
        leakage_B=torch.from_numpy(np.sqrt(leak_sq_B)),
        leakage_fraction=float(leak_sq_B.sum() / total) if total > 0 else 0.0,
    )


def neuron_polysemanticity(
    W_dec_ND: Float[Tensor, "n d"],
    mean_sq_act_N: Float[Tensor, " n"] | None = None,
    chunk_size: int = 4096,
) -> Float[Tensor, " d"]:
    """NP_c = (Σ_k u_ck²)² / Σ_k u_ck⁴: effective number of latents loading on coordinate c
    (docs/methods.md#neuron-polysemanticity).

    u_ck = √E[a_k²] · (W_dec)_{k,c}: coordinate c (a neuron, when the SAE reads a neuron basis) of
    latent k's write vector, weighted by usage. [inferred] "Weighted by usage" is read as the same
    √E[a²] scaling as the usage-weighted capacity. A coordinate no latent touches gets 0.
    """
    n, d = W_dec_ND.shape
    s2_D = torch.zeros(d, dtype=torch.float64, device=W_dec_ND.device)
    s4_D = torch.zeros_like(s2_D)
    for s in range(0, n, chunk_size):
        u_CD = W_dec_ND[s : s + chunk_size].to(torch.float64)
        if mean_sq_act_N is not None:
            u_CD = u_CD * mean_sq_act_N[s : s + chunk_size, None].to(u_CD).clamp_min(0).sqrt()
        u2_CD = u_CD * u_CD
        s2_D += u2_CD.sum(0)
        s4_D += (u2_CD * u2_CD).sum(0)
    return torch.where(s4_D > 0, s2_D**2 / s4_D.where(s4_D > 0, 1.0), 0.0)


def _class_codes(c: FeatureClasses) -> Tensor:
    """0 ignored, 1 polysemantic, 2 monosemantic, per feature."""
    return c.polysemantic_N.long() + 2 * c.monosemantic_N.long()


def _one_view(
    cap: FeatureCapacity, classes: FeatureClasses, n_null: int, d: int, bins: int
) -> dict[str, Any]:
    total = float(cap.capacity_N.sum())
    live = ~classes.ignored_N.to(cap.capacity_N.device)
    null = capacity_null(d, n_null) if n_null > 0 else 0.0
    hist = torch.histc(cap.capacity_N.float().cpu(), bins=bins, min=0.0, max=1.0)
    sq_fro = float(cap.sq_norm_N.sum())
    return {
        "sum_capacity": total,
        "rank": cap.rank,
        "saturation": total / cap.rank if cap.rank else 0.0,  # s = ΣC / rank
        "sum_over_d": total / d,
        "null_sum_capacity": null,  # random unit dictionary with n_null features
        "sum_over_null": total / null if null else float("nan"),
        "dims_per_feature": d / sq_fro if sq_fro else float("nan"),  # Elhage D*
        "n_monosemantic": int(classes.monosemantic_N.sum()),
        "n_polysemantic": int(classes.polysemantic_N.sum()),
        "n_ignored": int(classes.ignored_N.sum()),
        "mean_capacity_live": float(cap.capacity_N[live].mean()) if bool(live.any()) else 0.0,
        "max_residual": float(cap.residual_N.max()),
        "histogram": {
            "edges": np.linspace(0, 1, bins + 1).round(9).tolist(),
            "counts": [int(c) for c in hist.tolist()],
        },
    }


def capacity_summary(
    W_ND: Float[Tensor, "n d"],
    mean_sq_act_N: Float[Tensor, " n"] | None = None,
    dead_N: Bool[Tensor, " n"] | None = None,
    *,
    eps: float = 0.05,
    tau_norm: float = 0.1,
    block_tau: float | None = None,
    blocks: bool = True,
    max_blocks_listed: int = 20,
    bins: int = 20,
    chunk_size: int = 4096,
    per_feature: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """JSON-ready capacity report (docs/methods.md#capacity-suite): geometric capacity,
    usage-weighted capacity (if ``mean_sq_act_N``), classes, saturation, the random null, block
    structure and the neuron polysemanticity index.

    Works for an SAE decoder (``W_dec [d_sae, d_in]``, pass E[a²] and the dead mask) and for a
    model's MLP read vectors (rows of ``W_in [d_mlp, d_model]``, no usage). The null for the
    usage-weighted view counts only rows with nonzero usage [inferred: a dead latent neither holds
    capacity nor interferes]. ``blocks=False`` skips the O(N² d) neighbour search.
    """
    n, d = W_ND.shape
    geo = feature_capacity(W_ND, chunk_size=chunk_size)
    geo_cls = classify_features(geo, dead_N, eps, tau_norm)
    out: dict[str, Any] = {
        "d_in": d,
        "n_features": n,
        "thresholds": {"eps": eps, "tau_norm": tau_norm, "block_tau": block_tau or 3 / d**0.5},
        "geometric": _one_view(geo, geo_cls, n, d, bins),
    }
    per = per_feature if per_feature is not None else {}
    per["capacity_geometric"] = geo.capacity_N
    per["class_geometric"] = _class_codes(geo_cls)
    if blocks:
        bs = block_structure(W_ND, block_tau, geo_cls.ignored_N, geo, chunk_size=chunk_size)
        per["block"] = bs.label_N
        sizes, counts = np.unique(bs.size_B.numpy(), return_counts=True)
        out["geometric"]["blocks"] = {
            "count": len(bs.size_B),
            "size_counts": {str(int(s)): int(c) for s, c in zip(sizes, counts, strict=True)},
            "leakage_fraction": bs.leakage_fraction,
            "largest": [
                {
                    "n": int(bs.size_B[b]),
                    "dim": int(bs.dim_B[b]),
                    "tightness": float(bs.tightness_B[b]),
                    "leakage": float(bs.leakage_B[b]),
                }
                for b in range(min(max_blocks_listed, len(bs.size_B)))
            ],
        }
    if mean_sq_act_N is not None:
        use = feature_capacity(W_ND, mean_sq_act_N, chunk_size)
        use_cls = classify_features(use, dead_N, eps, tau_norm)
        per["capacity_usage_weighted"] = use.capacity_N
        per["class_usage_weighted"] = _class_codes(use_cls)
        out["usage_weighted"] = _one_view(use, use_cls, int((use.sq_norm_N > 0).sum()), d, bins)
    np_D = neuron_polysemanticity(W_ND, mean_sq_act_N, chunk_size)
    # NP per input coordinate: a neuron when the SAE reads an MLP's neuron basis.
    out["neuron_polysemanticity"] = {
        "mean": float(np_D.mean()),
        "median": float(np_D.median()),
        "max": float(np_D.max()),
    }
    return out
