"""Random-projection smoothness test: structure function, Hurst exponent, jumps
(docs/methods.md#random-projection-hurst-test).

Pure functions; no file I/O. Path activations are F [P, T, d]: P input paths, T points along
each, d units (neurons, or SAE latents when F holds latents). A single path [T, d] is accepted.

    F_PTD = model_activations_along_paths(...)  # e.g. interpolated embeddings
    record = smoothness_record(F_PTD)           # H_random, H_basis, jump diagnosis; JSON-ready

The Hurst reading of Stringer's test and every threshold here are [inferred] project definitions:
Stringer et al. 2019 show random projections, not H.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float

from sae.analysis.spectrum import jsonable

Array = np.ndarray | torch.Tensor
SMOOTH_H = 0.9  # [inferred] H at or above this reads as mean-square differentiable
JUMP_KURTOSIS = 3.0  # [inferred] excess kurtosis of a Laplace law; Gaussian increments give 0
PRIVILEGED_DH = 0.1  # [inferred] |H_basis − H_random| above this: the basis is privileged


def _paths64(F: Array) -> np.ndarray:
    F = F.detach().to("cpu", torch.float64).numpy() if isinstance(F, torch.Tensor) else F
    F_PTD = np.asarray(F, dtype=np.float64)
    return F_PTD[None] if F_PTD.ndim == 2 else F_PTD


def random_unit_directions(d: int, R: int, seed: int = 0) -> np.ndarray:
    """[R, d] directions drawn uniformly on the sphere S^{d−1} (normalised Gaussians), float64."""
    w_RD = np.random.default_rng(seed).standard_normal((R, d))
    return w_RD / np.linalg.norm(w_RD, axis=1, keepdims=True)


def geometric_lags(
    T: int, lag_min: int | None = None, lag_max: int | None = None, n_lags: int = 12
) -> np.ndarray:
    """Unique integer lags spaced geometrically; default T/256 … T/16 grid steps.

    The default is the window in which the sinusoid-code H table of the tests was measured (16-256
    at T = 4096): long enough to skip grid-scale effects, short enough for many independent pairs.
    """
    lo = max(1, T // 256) if lag_min is None else lag_min
    hi = max(lo + 1, T // 16) if lag_max is None else lag_max
    assert 1 <= lo < hi < T, f"need 1 <= lag_min < lag_max < T, got {lo}, {hi}, T={T}"
    return np.unique(np.round(np.geomspace(lo, hi, n_lags)).astype(int))


def _projections(F_TD: np.ndarray, directions_RD: np.ndarray | None) -> np.ndarray:
    # r(t) = wᵀ(F(t) − mean_t F) (step 2 of the test); None projects on the coordinate axes.
    # The matmul runs in torch so the package stays in one BLAS thread pool (see spectrum._eigh_desc).
    Fc_TD = F_TD - F_TD.mean(0)
    if directions_RD is None:
        return Fc_TD
    return (torch.from_numpy(Fc_TD) @ torch.from_numpy(directions_RD).T).numpy()


def _unit_rows(directions_RD: Array | None) -> np.ndarray | None:
    if directions_RD is None:
        return None
    w_RD = _paths64(directions_RD)[0]
    norms = np.linalg.norm(w_RD, axis=1, keepdims=True)
    return w_RD / np.where(norms > 0, norms, 1.0)


def structure_function_per_direction(
    F_PTD: Float[Array, "*p t d"],
    directions_RD: Float[Array, "r d"] | None = None,
    lags: np.ndarray | None = None,
) -> np.ndarray:
    """[L, R] S_w(Δ) = mean over paths and t of (r_w(t+Δ) − r_w(t))², one column per direction.

    directions_RD rows are normalised to unit length; None means the coordinate (basis) axes.
    Lags do not wrap around the path ends.
    """
    F_PTD = _paths64(F_PTD)
    lags = geometric_lags(F_PTD.shape[1]) if lags is None else np.asarray(lags, dtype=int)
    w_RD = _unit_rows(directions_RD)
    sums_LR: np.ndarray | float = 0.0
    for F_TD in F_PTD:  # one path at a time keeps memory at O(T·R)
        r_TR = _projections(F_TD, w_RD)
        sums_LR = sums_LR + np.stack([((r_TR[lag:] - r_TR[:-lag]) ** 2).sum(0) for lag in lags])
    counts_L = F_PTD.shape[0] * (F_PTD.shape[1] - lags)
    return sums_LR / counts_L[:, None]


def structure_function(
    F_PTD: Float[Array, "*p t d"],
    directions_RD: Float[Array, "r d"] | None = None,
    lags: np.ndarray | None = None,
) -> np.ndarray:
    """[L] S(Δ) = mean over paths, t and directions of (r(t+Δ) − r(t))² (step 3)."""
    return structure_function_per_direction(F_PTD, directions_RD, lags).mean(1)


def _half_slopes(lags: np.ndarray, S_LR: np.ndarray) -> np.ndarray:
    # H = ½ · OLS slope of ln S on ln Δ, for every column at once; NaN where S hits 0 (dead unit)
    with np.errstate(divide="ignore"):
        y_LR = np.log(S_LR)
    ok_R = np.isfinite(y_LR).all(0)
    x_L = np.log(lags) - np.log(lags).mean()
    slope_R = np.full(S_LR.shape[1], math.nan)
    slope_R[ok_R] = x_L @ (y_LR[:, ok_R] - y_LR[:, ok_R].mean(0)) / (x_L @ x_L)
    return 0.5 * slope_R


def increment_kurtosis(
    F_PTD: Float[Array, "*p t d"],
    directions_RD: Float[Array, "r d"] | None = None,
    lag: int = 1,
) -> float:
    """Excess kurtosis of increments r(t+lag) − r(t), each direction scaled to unit RMS first.

    Separates isolated jumps (TopK/JumpReLU switching: a few huge increments, heavy tails) from
    a rough but continuous Gaussian-like field (≈ 0); both can give H ≈ 0.5 (step 5).
    Per-direction scaling matters: pooling directions of unequal scale fakes heavy tails.
    Directions with no movement at all (dead units) are left out.
    """
    F_PTD = _paths64(F_PTD)
    w_RD = _unit_rows(directions_RD)
    incs = []
    for F_TD in F_PTD:
        r_TR = _projections(F_TD, w_RD)
        incs.append(r_TR[lag:] - r_TR[:-lag])
    inc_NR = np.concatenate(incs, axis=0)
    rms_R = np.sqrt((inc_NR**2).mean(0))
    live = rms_R > 1e-12 * max(float(rms_R.max()), 1e-300)
    if not live.any():
        return math.nan
    z = inc_NR[:, live] / rms_R[live]
    return float((z**4).mean() - 3.0)


class HurstFit(NamedTuple):
    H: float
    """½ · slope of ln S(Δ) vs ln Δ, S pooled over directions: 1 smooth, <1 rough"""
    H_median: float
    """median over directions of each direction's own H [inferred]"""
    H_iqr: tuple[float, float]
    """25th and 75th percentiles of the per-direction H"""
    lags: np.ndarray
    """[L] lags in grid steps"""
    S: np.ndarray
    """[L] pooled structure function at those lags"""
    r2: float
    """R² of the pooled log-log line"""
    increment_kurtosis: float
    """excess kurtosis of one-step increments (jump diagnosis)"""
    verdict: Literal["smooth", "rough", "jumps"]
    """[inferred] H ≥ 0.9: smooth; else kurtosis > 3: jumps; else rough"""


def hurst_exponent(
    F_PTD: Float[Array, "*p t d"],
    directions_RD: Float[Array, "r d"] | None = None,
    lags: np.ndarray | None = None,
) -> HurstFit:
    """Hurst/Hölder exponent H = ½ · OLS slope of ln S vs ln Δ over geometric lags
    (docs/methods.md#random-projection-hurst-test, step 4).

    H pools S over directions. H_median fits each direction on its own:
    pooled S is nearly the same for any orthonormal set and for random directions (E_w (wᵀv)² =
    ‖v‖²/d), so only per-direction H can show that a basis is privileged [inferred].
    """
    F_PTD = _paths64(F_PTD)
    lags = geometric_lags(F_PTD.shape[1]) if lags is None else np.asarray(lags, dtype=int)
    S_LR = structure_function_per_direction(F_PTD, directions_RD, lags)
    S_L = S_LR.mean(1)
    kurt = increment_kurtosis(F_PTD, directions_RD)
    h_R = _half_slopes(lags, S_LR)
    h_R = h_R[np.isfinite(h_R)]
    q25, q50, q75 = np.percentile(h_R, [25, 50, 75]) if h_R.size else (math.nan,) * 3
    H = float(_half_slopes(lags, S_L[:, None])[0])
    if math.isnan(H):
        return HurstFit(
            H, float(q50), (float(q25), float(q75)), lags, S_L, math.nan, kurt, "smooth"
        )
    y = np.log(S_L)
    resid = y - y.mean() - 2 * H * (np.log(lags) - np.log(lags).mean())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    verdict = "smooth" if H >= SMOOTH_H else ("jumps" if kurt > JUMP_KURTOSIS else "rough")
    return HurstFit(H, float(q50), (float(q25), float(q75)), lags, S_L, r2, kurt, verdict)


def predicted_hurst(alpha: float, d_manifold: float = 1.0) -> float:
    """H = min(1, d(α − 1)/2) for a power-law code on a d-manifold [derived;
    docs/methods.md#random-projection-hurst-test], ≥ 0."""
    return float(min(1.0, max(0.0, d_manifold * (alpha - 1.0) / 2.0)))


def smoothness_record(
    F_PTD: Float[Array, "*p t d"],
    n_random: int = 100,
    seed: int = 0,
    basis_RD: Float[Array, "r d"] | None = None,
    lags: np.ndarray | None = None,
) -> dict[str, Any]:
    """H along the paths for random unit directions vs basis directions (step 6).

    basis_RD: the basis to test, e.g. SAE encoder rows or LIB/PCA directions in F's space;
    None uses F's own coordinate axes (neurons, or latents when F holds SAE latents).
    H_random/H_basis pool S over directions; basis_privileged ([inferred]) compares
    the per-direction medians, |H_basis_median − H_random_median| > 0.1, because the pooled
    values agree in expectation for any basis (see hurst_exponent).
    """
    F_PTD = _paths64(F_PTD)
    lags = geometric_lags(F_PTD.shape[1]) if lags is None else np.asarray(lags, dtype=int)
    rand = hurst_exponent(F_PTD, random_unit_directions(F_PTD.shape[2], n_random, seed), lags)
    basis = hurst_exponent(F_PTD, basis_RD, lags)
    dh = basis.H_median - rand.H_median
    return jsonable({
        "H_random": rand.H, "H_basis": basis.H,
        "H_random_median": rand.H_median, "H_basis_median": basis.H_median,
        "H_random_iqr": rand.H_iqr, "H_basis_iqr": basis.H_iqr,
        "basis_privileged": None if math.isnan(dh) else bool(abs(dh) > PRIVILEGED_DH),
        "verdict_random": rand.verdict, "verdict_basis": basis.verdict,
        "kurtosis_random": rand.increment_kurtosis, "kurtosis_basis": basis.increment_kurtosis,
        "r2_random": rand.r2, "r2_basis": basis.r2,
        "lags": lags, "S_random": rand.S, "S_basis": basis.S,
        "n_paths": F_PTD.shape[0], "T": F_PTD.shape[1], "n_random": n_random,
    })  # fmt: skip


def sinusoid_code(T: int = 4096, n_freq: int = 500, alpha: float = 2.0) -> np.ndarray:
    """Stringer's circle code [T, 2·n_freq]: cos(kθ), sin(kθ) scaled by k^(−α/2), θ_t = 2πt/T.

    Its covariance has eigenvalue pairs ½k^(−α), so the spectrum decays as rank^(−α)
    (Stringer et al. 2019).
    """
    theta_T = 2 * np.pi * np.arange(T) / T
    k_K = np.arange(1, n_freq + 1)
    phase_TK = np.outer(theta_T, k_K)
    scale_K = k_K ** (-alpha / 2)
    return np.concatenate([np.cos(phase_TK) * scale_K, np.sin(phase_TK) * scale_K], axis=1)
