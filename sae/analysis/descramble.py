"""Closed-form descrambler of a layer's preactivations (Sule, Spencer & Czaja 2023;
docs/methods.md#descrambler).

Preactivations ``H = W X + b 1ᵀ`` (n_h × n, columns = samples). The descrambler is the orthogonal P
minimising the roughness η(P) = Σ_x ‖D P h_x‖² = tr(L P HHᵀ Pᵀ), L = DᵀD, over O(n_h). That is a
Brockett function, so the optimum is closed form (Brockett 1991): with L = T diag(μ) Tᵀ (μ
ascending) and HHᵀ = U diag(σ²) Uᵀ (σ descending), P* = T Uᵀ and η* = Σ_k μ_k σ_k². No optimiser is
needed.

Batches arrive as ``h_BH`` (rows = samples, the transpose of the paper's H); ``hht_HH`` is HHᵀ.

    from sae.analysis.descramble import (
        accumulate_hht, descrambled_weights, descrambler, smoothness_operator,
    )
    hht_HH = accumulate_hht(h_BH for h_BH in preactivation_batches)
    d = descrambler(hht_HH, smoothness_operator(hht_HH.shape[0], "path"))
    W_desc = descrambled_weights(d.P_HH, mlp.fc1.weight).W_HD
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "Descrambler",
    "DescrambledWeights",
    "Seriation",
    "fourier_derivative",
    "path_difference",
    "smoothness_operator",
    "accumulate_hht",
    "eta",
    "brockett_bound",
    "descrambler",
    "descrambled_weights",
    "seriate",
]


class Descrambler(NamedTuple):
    P_HH: Tensor  # P* = T Uᵀ, orthogonal; row k = the k-th smoothest output unit
    eta_star: float  # η(P*) = Σ_k μ_k σ_k², the Brockett lower bound
    mu_H: Tensor  # eigenvalues of L, ascending (smoothest mode first)
    sigma_sq_H: Tensor  # eigenvalues of HHᵀ, descending (uncentred PCA variances × n)
    T_HH: Tensor  # eigenvectors of L, columns in the order of mu_H
    U_HH: Tensor  # eigenvectors of HHᵀ, columns in the order of sigma_sq_H


class DescrambledWeights(NamedTuple):
    W_HD: Tensor  # P W: the descrambled read weights
    b_H: Tensor | None  # P b


class Seriation(NamedTuple):
    perm_H: Tensor  # output unit k is input neuron perm_H[k]
    P_HH: Tensor  # the permutation matrix, P[k, perm[k]] = 1
    eta: float  # η of that permutation under the path operator (≥ η* of the orthogonal problem)


def fourier_derivative(n: int, dtype: torch.dtype = torch.float64) -> Float[Tensor, "n n"]:
    """Periodic Fourier spectral first-derivative matrix on the grid θ_j = 2πj/n
    (docs/methods.md#smoothness-operators).

    D = F⁻¹ diag(i κ) F with κ the integer wavenumbers. For even n the Nyquist wavenumber is set to
    0 (the usual spectral-derivative convention), so L = DᵀD has eigenvalues 0, 0 (constant and
    Nyquist), then κ² twice each: 1, 1, 4, 4, …; cos/sin pairs are degenerate (O(2) freedom).
    [inferred] The reference code's treatment of the Nyquist mode was not checked.
    """
    kappa = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)
    if n % 2 == 0:
        kappa[n // 2] = 0.0
    eye = torch.eye(n, dtype=torch.complex128)
    D = torch.fft.ifft(1j * kappa[:, None] * torch.fft.fft(eye, dim=0), dim=0).real
    return D.to(dtype)


def path_difference(n: int, dtype: torch.dtype = torch.float64) -> Float[Tensor, "m n"]:
    """Neumann first-difference operator on a path, (n−1) × n: (Dh)_k = h_{k+1} − h_k
    (docs/methods.md#smoothness-operators).

    L = DᵀD is the path-graph Laplacian; its eigenvectors are the DCT-II modes with eigenvalues
    2 − 2cos(πk/n), k = 0..n−1, all distinct.
    """
    D = torch.zeros(n - 1, n, dtype=dtype)
    idx = torch.arange(n - 1)
    D[idx, idx] = -1.0
    D[idx, idx + 1] = 1.0
    return D


def smoothness_operator(
    n: int, kind: Literal["fourier", "path"] = "fourier", dtype: torch.dtype = torch.float64
) -> Float[Tensor, "n n"]:
    """L = DᵀD for the periodic Fourier derivative (the reference code's choice) or the path."""
    if kind not in ("fourier", "path"):
        raise ValueError(f"kind is {kind!r}; valid kinds are 'fourier' and 'path'.")
    D = fourier_derivative(n, dtype) if kind == "fourier" else path_difference(n, dtype)
    return D.T @ D


def accumulate_hht(batches: Iterable[Float[Tensor, "b h"]]) -> Float[Tensor, "h h"]:
    """HHᵀ = Σ_x h_x h_xᵀ streamed over batches ``[B, n_h]`` into fp64, O(n n_h²).

    Uncentred on purpose: H includes the bias, and the optimum pairs the SVD of H itself
    (docs/methods.md#descrambler).
    """
    hht_HH: Tensor | None = None
    for h_BH in batches:
        h_BH = h_BH.to(torch.float64)
        hht_HH = h_BH.T @ h_BH if hht_HH is None else hht_HH + h_BH.T @ h_BH
    if hht_HH is None:
        raise ValueError("batches is empty; pass at least one [batch, n_h] tensor.")
    return hht_HH


def eta(P_HH: Tensor, L_HH: Tensor, hht_HH: Tensor) -> float:
    """Roughness η(P) = tr(L P HHᵀ Pᵀ) in fp64."""
    P, L, B = (t.to(torch.float64) for t in (P_HH, L_HH, hht_HH))
    return float(((L @ P @ B) * P).sum())


def brockett_bound(mu_H: Tensor, sigma_sq_H: Tensor) -> float:
    """Σ_k μ_k σ_k² with μ ascending and σ² descending: min over O(n_h) of tr(L P B Pᵀ)."""
    mu = torch.sort(mu_H.to(torch.float64)).values
    s2 = torch.sort(sigma_sq_H.to(torch.float64), descending=True).values
    return float((mu * s2).sum())


def _sym_eigh(S: Tensor) -> tuple[Tensor, Tensor]:
    S = S.to(torch.float64)
    vals, vecs = torch.linalg.eigh((S + S.T) / 2)  # docs/methods.md#numerics
    return vals.clamp_min(0), vecs


def descrambler(hht_HH: Float[Tensor, "h h"], L_HH: Float[Tensor, "h h"]) -> Descrambler:
    """P* = T Uᵀ and η* = Σ μ_k σ_k². Unique only up to signs and equal-μ / equal-σ
    eigenspaces (the periodic operator's cos/sin pairs)."""
    if hht_HH.shape != L_HH.shape or hht_HH.shape[0] != hht_HH.shape[1]:
        raise ValueError(
            f"hht_HH {tuple(hht_HH.shape)} and L_HH {tuple(L_HH.shape)} must be the same square."
        )
    mu_H, T_HH = _sym_eigh(L_HH.to(hht_HH.device))  # ascending: smoothest mode first
    s2, U = _sym_eigh(hht_HH)
    sigma_sq_H, U_HH = s2.flip(0), U.flip(1)  # descending: largest principal component first
    P_HH = T_HH @ U_HH.T
    return Descrambler(P_HH, float((mu_H * sigma_sq_H).sum()), mu_H, sigma_sq_H, T_HH, U_HH)


def descrambled_weights(
    P_HH: Tensor, W_HD: Float[Tensor, "h d"], b_H: Tensor | None = None
) -> DescrambledWeights:
    """W_desc = P W (and P b): row k is the read vector of the k-th descrambled unit
    (docs/methods.md#descrambled-weights).

    For isotropic inputs this is T Σ_W V_Wᵀ, the layer's SVD with Fourier/DCT left factor. The next
    layer's ``W_next Pᵀ`` keeps the function only for a linear activation.
    """
    P = P_HH.to(torch.float64)
    b = None if b_H is None else P @ b_H.to(torch.float64)
    return DescrambledWeights(P @ W_HD.to(torch.float64), b)


def _two_opt(order: np.ndarray, dist: np.ndarray, max_passes: int) -> np.ndarray:
    """2-opt on an open path: reversing order[i..j] swaps edges (a, o_i), (o_j, c) for (a, o_j),
    (o_i, c). Vectorised over j, O(n²) per pass."""
    n = len(order)
    order = order.copy()
    for _ in range(max_passes):
        improved = False
        for i in range(n - 1):
            j = np.arange(i + 1, n)
            oi, oj = order[i], order[j]
            a = order[i - 1] if i > 0 else None
            nxt = np.where(j + 1 < n, order[np.minimum(j + 1, n - 1)], -1)
            has_c = nxt >= 0
            c = np.where(has_c, nxt, 0)
            before = (dist[a, oi] if a is not None else 0.0) + np.where(has_c, dist[oj, c], 0.0)
            after = (dist[a, oj] if a is not None else 0.0) + np.where(has_c, dist[oi, c], 0.0)
            delta = after - before
            k = int(np.argmin(delta))
            if delta[k] < -1e-12 * max(1.0, abs(before[k])):
                order[i : j[k] + 1] = order[i : j[k] + 1][::-1]
                improved = True
        if not improved:
            break
    return order


def seriate(
    hht_HH: Float[Tensor, "h h"],
    method: Literal["fiedler", "angle"] = "fiedler",
    two_opt_passes: int = 3,
) -> Seriation:
    """Permutation-restricted descrambler under the path operator: spectral seriation plus 2-opt.

    The signed-permutation problem is a quadratic assignment (NP-hard; docs/methods.md#seriation);
    under the path L it is an open travelling-salesman path with d_ij = B_ii + B_jj − 2B_ij = Σ_x
    (h_i − h_j)². Start from the Fiedler vector of the |correlation| graph, or from each neuron's
    angle in the top-2 PC plane, then improve by 2-opt. η* of :func:`descrambler` is a lower bound.
    [inferred] The similarity graph is |uncentred correlation| B_ij / √(B_ii B_jj).
    """
    if method not in ("fiedler", "angle"):
        raise ValueError(f"method is {method!r}; valid methods are 'fiedler' and 'angle'.")
    B = hht_HH.to(torch.float64).cpu()
    n = B.shape[0]
    diag = B.diagonal().clamp_min(1e-300)
    if method == "fiedler":
        S = (B.abs() / (diag[:, None] * diag[None, :]).sqrt()).fill_diagonal_(0)
        lap = torch.diag(S.sum(1)) - S
        _, vecs = torch.linalg.eigh(lap)
        key = vecs[:, 1] if n > 1 else torch.zeros(1, dtype=B.dtype)
    else:
        s2, U = _sym_eigh(B)
        load = U[:, -2:].flip(1) * s2[-2:].flip(0).sqrt()  # loadings on PC1, PC2
        key = torch.atan2(load[:, 1], load[:, 0])
    order = torch.argsort(key).numpy()
    Bn = B.numpy()
    dist = np.clip(np.diag(Bn)[:, None] + np.diag(Bn)[None, :] - 2 * Bn, 0, None)
    order = _two_opt(order, dist, two_opt_passes)
    perm_H = torch.from_numpy(order.copy())
    P_HH = torch.zeros(n, n, dtype=torch.float64)
    P_HH[torch.arange(n), perm_H] = 1.0
    return Seriation(perm_H, P_HH, eta(P_HH, smoothness_operator(n, "path"), B))
