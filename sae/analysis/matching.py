"""Dictionary matching: MMCS, recovery, Hungarian MCC and their random nulls (Sharkey, Braun &
Millidge 2022; docs/methods.md#mmcs), and the alignment of SAE features with a reference basis
(docs/methods.md#alignment).

Every dictionary holds one vector per **row** (``W_dec [d_sae, d_in]``, a true dictionary
``[N_gt, d_in]``). Cosines are computed in tiles of ``chunk_size × chunk_size``, so the full
m × N cosine matrix (17 GB at 65k × 65k in fp32) never exists; only the dense Hungarian path
builds it, and only below ``max_dense`` entries.

    from sae.analysis.matching import compare_dictionaries, random_null
    match = compare_dictionaries(true_ND, sae.W_dec)
    null = random_null(true_ND, sae.W_dec.shape[0])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.special import betainc
from torch import Tensor

__all__ = [
    "MaxCosine",
    "DictionaryMatch",
    "HungarianMatch",
    "NullMMCS",
    "BasisAlignment",
    "SubspaceCapture",
    "max_cosine",
    "compare_dictionaries",
    "hungarian_mcc",
    "random_null",
    "expected_null_mmcs",
    "basis_alignment",
    "subspace_capture",
]


class MaxCosine(NamedTuple):
    a_signed_A: Tensor  # max_b cos(a, b) for each row a of A
    a_abs_A: Tensor  # max_b |cos(a, b)|
    a_index_A: Tensor  # argmax_b cos(a, b)
    b_signed_B: Tensor  # max_a cos(a, b) for each row b of B
    b_abs_B: Tensor
    b_index_B: Tensor


class DictionaryMatch(NamedTuple):
    mmcs: float  # (1/N) Σ_i max_k cos(g_i, d_k), signed, as in the replication
    mmcs_abs: float
    reverse_mmcs: float  # learned → GT: (1/m) Σ_k max_i cos(d_k, g_i)
    reverse_mmcs_abs: float
    recovery_90: float  # fraction of GT features with max signed cos > 0.9
    recovery_99: float  # ... > 0.99
    max_cos_N: Tensor  # per GT feature, signed
    reverse_max_cos_M: Tensor  # per learned feature, signed


class HungarianMatch(NamedTuple):
    mcc: float  # mean over GT features of the matched cosine; unmatched GT count 0 [inferred]
    true_idx: Tensor  # matched GT rows
    learned_idx: Tensor  # their learned partners
    cos_K: Tensor  # cosine of each matched pair (signed, or abs if absolute=True)
    exact: bool  # False when the sparse top-k candidate graph was used (N·m > max_dense)


class NullMMCS(NamedTuple):
    mmcs: float  # mean over repeats, GT → random
    mmcs_abs: float
    reverse_mmcs: float  # random → GT
    reverse_mmcs_abs: float
    mmcs_std: float  # spread over repeats (signed GT → random)
    repeats: int


class BasisAlignment(NamedTuple):
    weighted_mmcs: float  # Σ_k w_k cos_max(k) / Σ_k w_k, w_k = E[a_k²] ‖d_k‖²
    mmcs: float  # unweighted mean of cos_max over latents
    reverse_mmcs: float  # mean over basis directions of max_k |cos(u_j, d_k)|
    null: float  # E[max of K iid |cos|] for random unit vectors in R^d (expected_null_mmcs)
    cos_max_M: Tensor  # max_j |cos(d_k, u_j)|
    reverse_cos_max_K: Tensor


class SubspaceCapture(NamedTuple):
    phi_R: Tensor  # φ_r for r = 1..K
    baseline_R: Tensor  # r / d, a random subspace


def _tiles(A_AD: Tensor, B_BD: Tensor, chunk_size: int) -> Iterator[tuple[int, int, Tensor]]:
    """Yield (a0, b0, cos tile) over all tiles; each tile normalises its own rows, so memory stays
    O(chunk² + chunk·d). Zero rows get cosine 0 with everything."""
    if A_AD.shape[1] != B_BD.shape[1]:
        raise ValueError(f"widths differ: {A_AD.shape[1]} vs {B_BD.shape[1]}; both need d_in.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size is {chunk_size}; it must be a positive integer.")
    dtype = torch.promote_types(torch.promote_types(A_AD.dtype, B_BD.dtype), torch.float32)
    norm = torch.nn.functional.normalize
    for a0 in range(0, A_AD.shape[0], chunk_size):
        a_CD = norm(A_AD[a0 : a0 + chunk_size].to(dtype), dim=1)
        for b0 in range(0, B_BD.shape[0], chunk_size):
            b_CD = norm(B_BD[b0 : b0 + chunk_size].to(device=a_CD.device, dtype=dtype), dim=1)
            yield a0, b0, a_CD @ b_CD.T


def max_cosine(
    A_AD: Float[Tensor, "a d"], B_BD: Float[Tensor, "b d"], chunk_size: int = 4096
) -> MaxCosine:
    """Best match of every row of A in B and of every row of B in A, in one tiled pass."""
    na, nb, dev = A_AD.shape[0], B_BD.shape[0], A_AD.device
    dtype = torch.promote_types(torch.promote_types(A_AD.dtype, B_BD.dtype), torch.float32)
    a_s = torch.full((na,), -torch.inf, dtype=dtype, device=dev)
    b_s = torch.full((nb,), -torch.inf, dtype=dtype, device=dev)
    a_abs, b_abs = torch.zeros_like(a_s), torch.zeros_like(b_s)
    a_i = torch.zeros(na, dtype=torch.long, device=dev)
    b_i = torch.zeros(nb, dtype=torch.long, device=dev)
    for a0, b0, cos_CC in _tiles(A_AD, B_BD, chunk_size):
        a1, b1 = a0 + cos_CC.shape[0], b0 + cos_CC.shape[1]
        v, i = cos_CC.max(1)
        better = v > a_s[a0:a1]
        a_s[a0:a1] = torch.where(better, v, a_s[a0:a1])
        a_i[a0:a1] = torch.where(better, i + b0, a_i[a0:a1])
        abs_CC = cos_CC.abs()
        a_abs[a0:a1] = torch.maximum(a_abs[a0:a1], abs_CC.max(1).values)
        v, i = cos_CC.max(0)
        better = v > b_s[b0:b1]
        b_s[b0:b1] = torch.where(better, v, b_s[b0:b1])
        b_i[b0:b1] = torch.where(better, i + a0, b_i[b0:b1])
        b_abs[b0:b1] = torch.maximum(b_abs[b0:b1], abs_CC.max(0).values)
    return MaxCosine(a_s, a_abs, a_i, b_s, b_abs, b_i)


def compare_dictionaries(
    true_ND: Float[Tensor, "n d"], learned_MD: Float[Tensor, "m d"], chunk_size: int = 4096
) -> DictionaryMatch:
    """MMCS both ways (signed and abs) and recovery at cos > 0.9 / 0.99 (docs/methods.md#mmcs).

    Invariant to permuting and positively rescaling rows; signed MMCS drops when a learned row is
    sign-flipped, the abs version does not.
    """
    mc = max_cosine(true_ND, learned_MD, chunk_size)
    return DictionaryMatch(
        mmcs=float(mc.a_signed_A.mean()),
        mmcs_abs=float(mc.a_abs_A.mean()),
        reverse_mmcs=float(mc.b_signed_B.mean()),
        reverse_mmcs_abs=float(mc.b_abs_B.mean()),
        recovery_90=float((mc.a_signed_A > 0.9).float().mean()),
        recovery_99=float((mc.a_signed_A > 0.99).float().mean()),
        max_cos_N=mc.a_signed_A,
        reverse_max_cos_M=mc.b_signed_B,
    )


def _candidates(
    true_ND: Tensor, learned_MD: Tensor, k: int, absolute: bool, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of each GT row's top-k and each learned row's top-k partners, as (i, j, score).

    Running top-k per row and per column, merged tile by tile: memory O((N + m)·k)."""
    n, m = true_ND.shape[0], learned_MD.shape[0]
    ka, kb = min(k, m), min(k, n)
    val_A = torch.full((n, ka), -torch.inf, dtype=torch.float64)
    idx_A = torch.zeros(n, ka, dtype=torch.long)
    val_B = torch.full((m, kb), -torch.inf, dtype=torch.float64)
    idx_B = torch.zeros(m, kb, dtype=torch.long)
    for a0, b0, cos_CC in _tiles(true_ND, learned_MD, chunk_size):
        score = (cos_CC.abs() if absolute else cos_CC).double().cpu()
        a1, b1 = a0 + score.shape[0], b0 + score.shape[1]
        v, i = score.topk(min(ka, score.shape[1]), dim=1)
        v, sel = torch.cat([val_A[a0:a1], v], 1).topk(ka, dim=1)
        idx_A[a0:a1] = torch.cat([idx_A[a0:a1], i + b0], 1).gather(1, sel)
        val_A[a0:a1] = v
        v, i = score.T.topk(min(kb, score.shape[0]), dim=1)
        v, sel = torch.cat([val_B[b0:b1], v], 1).topk(kb, dim=1)
        idx_B[b0:b1] = torch.cat([idx_B[b0:b1], i + a0], 1).gather(1, sel)
        val_B[b0:b1] = v
    i = np.concatenate([np.repeat(np.arange(n), ka), idx_B.reshape(-1).numpy()])
    j = np.concatenate([idx_A.reshape(-1).numpy(), np.repeat(np.arange(m), kb)])
    v = np.concatenate([val_A.reshape(-1).numpy(), val_B.reshape(-1).numpy()])
    _, first = np.unique(i.astype(np.int64) * m + j, return_index=True)
    return i[first], j[first], v[first]


def hungarian_mcc(
    true_ND: Float[Tensor, "n d"],
    learned_MD: Float[Tensor, "m d"],
    *,
    absolute: bool = False,
    max_dense: int = 1 << 26,
    candidates: int = 32,
    chunk_size: int = 4096,
) -> HungarianMatch:
    """One-to-one matching maximising the summed cosine, and its mean over GT features
    (docs/methods.md#hungarian-mcc).

    [inferred] MCC is taken on dictionary cosines (signed by default, since SAE latents are
    nonnegative and a flipped direction is not a recovery). Up to ``max_dense`` = N·m entries the
    full cosine matrix goes to ``scipy.optimize.linear_sum_assignment`` (exact). Above it, only the
    union of per-row and per-column top-``candidates`` pairs is kept and matched with
    ``min_weight_full_bipartite_matching``; each GT row also gets a private dummy partner, so a
    full matching always exists. Exact whenever the optimum uses candidate pairs only.
    """
    n, m = true_ND.shape[0], learned_MD.shape[0]
    if n * m <= max_dense:
        dtype = torch.promote_types(
            torch.promote_types(true_ND.dtype, learned_MD.dtype), torch.float32
        )
        cos_NM = torch.empty(n, m, dtype=dtype)
        for a0, b0, tile in _tiles(true_ND, learned_MD, chunk_size):
            cos_NM[a0 : a0 + tile.shape[0], b0 : b0 + tile.shape[1]] = tile.cpu()
        score_NM = (cos_NM.abs() if absolute else cos_NM).double().numpy()
        r, c = linear_sum_assignment(score_NM, maximize=True)
        val = score_NM[r, c]
        exact = True
    else:
        i, j, v = _candidates(true_ND, learned_MD, candidates, absolute, chunk_size)
        # Shift real weights into [1, 3] so any real pair beats a dummy (1e-6) and no weight is 0.
        w = np.concatenate([v + 2.0, np.full(n, 1e-6)])
        ii, jj = np.concatenate([i, np.arange(n)]), np.concatenate([j, m + np.arange(n)])
        graph = csr_matrix((w, (ii, jj)), shape=(n, m + n))
        r, c = min_weight_full_bipartite_matching(graph, maximize=True)
        real = c < m
        r, c = r[real], c[real]
        val = np.asarray(graph[r, c]).ravel() - 2.0
        exact = False
    return HungarianMatch(
        mcc=float(val.sum() / n),
        true_idx=torch.from_numpy(np.asarray(r, dtype=np.int64)),
        learned_idx=torch.from_numpy(np.asarray(c, dtype=np.int64)),
        cos_K=torch.from_numpy(np.asarray(val, dtype=np.float64)),
        exact=exact,
    )


def random_null(
    true_ND: Float[Tensor, "n d"],
    m: int,
    repeats: int = 3,
    seed: int = 0,
    chunk_size: int = 4096,
) -> NullMMCS:
    """MMCS of the true dictionary against ``repeats`` random unit dictionaries ``[m, d]``
    (Gaussian rows, normalised; seeded), the baseline to print beside every MMCS
    (docs/methods.md#random-dictionary-nulls)."""
    if m < 1 or repeats < 1:
        raise ValueError(f"m is {m} and repeats is {repeats}; both must be positive integers.")
    # Mix the seed so that seed 0 here never replays a caller's torch.manual_seed(0) draws.
    mixed = int(np.random.SeedSequence([seed, 0x6E756C6C]).generate_state(1, np.uint64)[0])
    gen = torch.Generator().manual_seed(mixed)
    runs = []
    for _ in range(repeats):
        rand_MD = torch.randn(m, true_ND.shape[1], generator=gen).to(true_ND.device)
        runs.append(compare_dictionaries(true_ND, rand_MD, chunk_size))
    arr = np.array([[r.mmcs, r.mmcs_abs, r.reverse_mmcs, r.reverse_mmcs_abs] for r in runs])
    mean = arr.mean(0)
    std = float(arr[:, 0].std(ddof=1)) if repeats > 1 else float("nan")
    return NullMMCS(*(float(x) for x in mean), mmcs_std=std, repeats=repeats)


def expected_null_mmcs(d_in: int, m: int, grid: int = 200_001) -> tuple[float, float]:
    """Exact E[max of m iid cos] and E[max of m iid |cos|] for a fixed unit vector against random
    unit vectors in R^d; (signed, abs). [derived] cos² ~ Beta(1/2, (d−1)/2), so with CDF F,
    E[max] = ∫_0^1 (1 − F^m) − ∫_{−1}^0 F^m. Gives 0.1890/0.2015 at d = 256, m = 512."""
    if d_in < 2 or m < 1:
        raise ValueError(f"d_in is {d_in} and m is {m}; need d_in ≥ 2 and m ≥ 1.")
    t = np.linspace(0.0, 1.0, grid)
    g = betainc(0.5, (d_in - 1) / 2, t**2)  # P(|cos| ≤ t)
    with np.errstate(divide="ignore"):
        f_pos = np.exp(m * np.log1p(-0.5 * (1 - g)))  # F(t)^m, t ≥ 0
        f_neg = np.exp(m * np.log(0.5 * (1 - g)))  # F(−t)^m
        g_m = np.exp(m * np.log(np.clip(g, 1e-300, None)))
    signed = np.trapezoid(1 - f_pos, t) - np.trapezoid(f_neg, t)
    return float(signed), float(np.trapezoid(1 - g_m, t))


def _weights(W_dec_MD: Tensor, mean_sq_act_M: Tensor | None) -> Tensor:
    w_M = W_dec_MD.to(torch.float64).pow(2).sum(1)
    if mean_sq_act_M is not None:
        w_M = w_M * mean_sq_act_M.to(w_M)
    return w_M


def basis_alignment(
    W_dec_MD: Float[Tensor, "m d"],
    basis_KD: Float[Tensor, "k d"],
    mean_sq_act_M: Float[Tensor, " m"] | None = None,
    chunk_size: int = 4096,
) -> BasisAlignment:
    """Usage-weighted MMCS of SAE write vectors against a reference basis (PCA, LIB write
    directions, neurons, the descrambler's rows), plus the reverse direction
    (docs/methods.md#alignment).

    Without ``mean_sq_act_M`` the weights are ‖d_k‖² alone. The null is the exact iid expectation;
    the heuristic √(2 ln(2K)/d) overestimates it (0.23 vs 0.20 at d = 256, K = 512).
    """
    mc = max_cosine(W_dec_MD, basis_KD, chunk_size)
    w_M = _weights(W_dec_MD, mean_sq_act_M).to(mc.a_abs_A.device)
    cos_M = mc.a_abs_A.to(torch.float64)
    wsum = float(w_M.sum())
    return BasisAlignment(
        weighted_mmcs=float((w_M * cos_M).sum()) / wsum if wsum > 0 else float("nan"),
        mmcs=float(cos_M.mean()),
        reverse_mmcs=float(mc.b_abs_B.mean()),
        null=expected_null_mmcs(W_dec_MD.shape[1], basis_KD.shape[0])[1],
        cos_max_M=mc.a_abs_A,
        reverse_cos_max_K=mc.b_abs_B,
    )


def subspace_capture(
    W_dec_MD: Float[Tensor, "m d"],
    basis_KD: Float[Tensor, "k d"],
    mean_sq_act_M: Float[Tensor, " m"] | None = None,
    chunk_size: int = 4096,
) -> SubspaceCapture:
    """φ_r = Σ_k w_k ‖P_{S_r} d̂_k‖² / Σ_k w_k for every r = 1..K, S_r = span of the first r basis
    rows after QR (docs/methods.md#subspace-capture). Random-subspace baseline r/d.

    [inferred] d_k enters the projection unit-normalised (its norm is already in w_k), so φ_r ∈
    [0, 1] and r/d is the right baseline. Assumes the first K basis rows are independent.
    """
    d = W_dec_MD.shape[1]
    Q_DK, _ = torch.linalg.qr(basis_KD.to(torch.float64).T)
    Q_DK = Q_DK.to(W_dec_MD.device)
    w_M = _weights(W_dec_MD, mean_sq_act_M).to(W_dec_MD.device)
    acc_K = torch.zeros(Q_DK.shape[1], dtype=torch.float64, device=W_dec_MD.device)
    for s in range(0, W_dec_MD.shape[0], chunk_size):
        dn_CD = torch.nn.functional.normalize(W_dec_MD[s : s + chunk_size].to(torch.float64), dim=1)
        proj_CK = (dn_CD @ Q_DK).pow(2).cumsum(1)  # ‖P_{S_r} d̂‖² for every r at once
        acc_K += w_M[s : s + chunk_size] @ proj_CK
    r_K = torch.arange(1, Q_DK.shape[1] + 1, dtype=torch.float64)
    return SubspaceCapture((acc_K / w_M.sum()).cpu(), r_K / d)
