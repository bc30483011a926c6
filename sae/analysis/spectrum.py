"""Eigenspectrum, power-law exponent and redundancy of a layer's code
(docs/methods.md#redundancy-suite).

Pure functions on tensors; no file I/O. Second moments are accumulated in float64 whatever the
input dtype (docs/methods.md#numerics); spectra come back as float64 numpy arrays, descending.
The accumulators live in `sae.analysis.moments` and are re-exported here.

    acc = CovarianceAccumulator()
    for x_BD in batches:
        acc.update(x_BD)
    record = redundancy_summary(acc)  # the redundancy record, JSON-ready
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float

from sae.analysis.moments import (
    EPS_REL,
    Array,
    CovarianceAccumulator,
    _eigh_desc,
    _np64,
    _t64,
    _zero_tail,
    randomized_eigenspectrum,
)

__all__ = [  # the names other modules import; CovarianceAccumulator etc. are re-exports
    "EPS_REL",
    "CovarianceAccumulator",
    "randomized_eigenspectrum",
    "eigenspectrum",
    "PowerLawFit",
    "default_fit_window",
    "fit_power_law",
    "AlphaBootstrap",
    "bootstrap_alpha",
    "participation_ratio",
    "effective_rank",
    "n_for_variance",
    "rho_pr",
    "rho_info",
    "rho_offdiag",
    "smoothness_threshold",
    "redundancy_summary",
    "redundancy_summary_top",
    "SpectralFidelity",
    "spectral_fidelity_from_stats",
    "spectral_fidelity",
    "jsonable",
]

# --- eigenspectrum (docs/methods.md#eigenspectrum) ------------------------------------------


def eigenspectrum(cov_DD: Float[Array, "d d"], top_k: int | None = None) -> np.ndarray:
    """Covariance eigenvalues in float64, descending, negatives clipped, λ ≤ 1e-12·λ_1 set to 0.

    top_k keeps the leading k (α needs ≤ ~1000); the decomposition itself is full, O(d³).
    """
    return _eigh_desc(cov_DD, top_k)[0]


# --- power-law exponent (docs/methods.md#alpha-power-law-exponent) -----------------------


class PowerLawFit(NamedTuple):
    alpha: float
    """exponent: λ_k ∝ k^(−α); NaN when the window spans less than a decade"""
    intercept: float
    """b in ln λ_k = b − α ln k"""
    fit_range: tuple[int, int]
    """(k_lo, k_hi), 1-based ranks, inclusive"""
    r2_loglog: float
    """R² of the line on ~100 log-spaced ranks of the window"""
    alpha_drift: float
    """α(first log-half) − α(second log-half)"""
    broken_power_law: bool
    """|alpha_drift| > 0.2: not a single power law"""


def default_fit_window(r: int, n_samples: int | None = None, k_lo: int = 11) -> tuple[int, int]:
    """k_hi = min(500, ⌊r/2⌋, ⌊n/20⌋) keeps the sample-eigenvalue bias under ~0.05
    (docs/methods.md#fit-window-r2-and-drift)."""
    k_hi = min(500, r // 2, n_samples // 20 if n_samples else r)
    return k_lo, k_hi


def _wls_slope(ev: np.ndarray, k_lo: int, k_hi: int) -> tuple[float, float]:
    # Stringer's get_powerlaw: WLS in log-log with w_k = 1/k, so each decade weighs about equally.
    k = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    a_K2 = np.stack([np.ones_like(k), np.log(k)], 1)
    w_K1 = (1.0 / k)[:, None]
    b0, b1 = np.linalg.solve(a_K2.T @ (a_K2 * w_K1), (a_K2 * w_K1).T @ np.log(ev[k_lo - 1 : k_hi]))
    return float(-b1), float(b0)


def fit_power_law(
    eigvals: Float[Array, " r"],
    k_lo: int = 11,
    k_hi: int | None = None,
    n_samples: int | None = None,
) -> PowerLawFit:
    """Fit ln λ_k = b − α ln k on ranks [k_lo, k_hi] by Stringer's 1/k-weighted least squares.

    Default k_hi (docs/methods.md#fit-window-r2-and-drift) from the numerical rank r and n_samples;
    an explicit k_hi is capped at r. Returns NaNs if k_hi/k_lo < 10 (less than a decade cannot pin a
    slope).
    The drift sign (α of the head half minus the tail half) and the 0.2 flag are [inferred].
    """
    ev = np.sort(_np64(eigvals))[::-1]
    r = int(np.count_nonzero(_zero_tail(ev.copy())))
    k_hi = default_fit_window(r, n_samples, k_lo)[1] if k_hi is None else min(k_hi, r)
    if k_lo < 1 or k_hi < 10 * k_lo:
        return PowerLawFit(math.nan, math.nan, (k_lo, k_hi), math.nan, math.nan, False)
    alpha, b = _wls_slope(ev, k_lo, k_hi)
    k_log = np.unique(np.round(np.geomspace(k_lo, k_hi, 100)).astype(int))
    y = np.log(ev[k_log - 1])
    resid = y - (b - alpha * np.log(k_log))
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    k_mid = int(round(math.sqrt(k_lo * k_hi)))
    drift = _wls_slope(ev, k_lo, k_mid)[0] - _wls_slope(ev, k_mid, k_hi)[0]
    return PowerLawFit(alpha, b, (k_lo, k_hi), r2, drift, abs(drift) > 0.2)


class AlphaBootstrap(NamedTuple):
    alpha: float
    """α of all groups pooled"""
    ci95: tuple[float, float]
    """basic (reverse-percentile) 95% interval (2α̂ − q97.5, 2α̂ − q2.5) of the bootstrap α's"""
    bias: float
    """bootstrap estimate of the bias of α̂: mean of the replicates minus α̂"""
    alphas: np.ndarray
    """[n_boot] bootstrap replicates (NaN where a replicate could not be fitted)"""
    fit_range: tuple[int, int]
    """window of the pooled fit, reused by every replicate"""


def bootstrap_alpha(
    accumulators: Sequence[CovarianceAccumulator],
    n_boot: int = 100,
    seed: int = 0,
    k_lo: int = 11,
    k_hi: int | None = None,
) -> AlphaBootstrap:
    """CI for α by resampling whole groups (sequences or shards) with replacement
    (docs/methods.md#alpha-interval-and-bias).

    Tokens within a sequence are correlated, so groups, not rows, are the resampling unit. The
    window is fixed from the pooled fit so the interval reflects sampling noise, not window moves.

    The interval is the basic bootstrap, not the percentile one: a resample repeats groups, so it
    holds fewer distinct rows, and the finite-sample bias of the tail eigenvalues (which steepens
    the spectrum) is larger in every replicate than in the pooled fit. Replicates therefore sit
    above α̂, and reflecting them about α̂ covers the true α more often than the percentile
    interval (docs/methods.md#alpha-interval-and-bias; pinned by
    tests/analysis/test_spectrum.py::test_bootstrap_alpha_interval_corrects_the_resampling_bias).
    """
    full = CovarianceAccumulator.pooled(accumulators)
    fit = fit_power_law(eigenspectrum(full.cov()), k_lo, k_hi, n_samples=full.n)
    lo, hi = fit.fit_range
    rng = np.random.default_rng(seed)
    alphas = np.full(n_boot, math.nan)
    if not math.isnan(fit.alpha):
        g = len(accumulators)
        for b in range(n_boot):
            counts = rng.multinomial(g, np.full(g, 1.0 / g))
            ev = eigenspectrum(CovarianceAccumulator.pooled(accumulators, counts).cov(), top_k=hi)
            alphas[b] = fit_power_law(ev, lo, hi).alpha if np.count_nonzero(ev) >= hi else math.nan
    if np.isfinite(alphas).any():
        q_lo, q_hi = np.nanpercentile(alphas, [2.5, 97.5])
        ci = (2 * fit.alpha - float(q_hi), 2 * fit.alpha - float(q_lo))
        bias = float(np.nanmean(alphas)) - fit.alpha
    else:
        ci, bias = (math.nan, math.nan), math.nan
    return AlphaBootstrap(fit.alpha, ci, bias, alphas, fit.fit_range)


# --- effective dimension and redundancy (docs/methods.md#participation-ratio; [inferred]) --


def participation_ratio(x: Float[Array, "d d"] | Float[Array, " r"]) -> float:
    """PR = (Σλ)²/Σλ² from eigenvalues (1-D), or (tr Σ)²/‖Σ‖_F² from a covariance (2-D, no eigh).

    [inferred] as a redundancy measure (docs/methods.md#participation-ratio); the formula itself is
    standard.
    """
    x = _np64(x)
    if x.ndim == 1:
        num, den = float(x.sum()) ** 2, float((x * x).sum())
    else:
        num, den = float(np.trace(x)) ** 2, float((x * x).sum())
    return num / den if den > 0 else math.nan


def effective_rank(eigvals: Float[Array, " r"]) -> float:
    """exp of the Shannon entropy of p_k = λ_k/Σλ [inferred]."""
    ev = _np64(eigvals)
    p = ev[ev > 0] / ev.sum()
    return float(np.exp(-(p * np.log(p)).sum())) if p.size else math.nan


def n_for_variance(eigvals: Float[Array, " r"], frac: float = 0.9) -> int:
    """Fewest leading PCs that hold `frac` of the variance (n90 at 0.9) [inferred]."""
    ev = np.sort(_np64(eigvals))[::-1]
    cum = np.cumsum(ev)
    # relative slack so that exactly-on-the-boundary cases (rank r, equal λ) are not off by one
    return int(np.searchsorted(cum, frac * cum[-1] * (1 - 1e-12)) + 1)


def rho_pr(x: Float[Array, "d d"] | Float[Array, " r"], d_amb: int | None = None) -> float:
    """1 − PR/D_amb [inferred]: ≈ γ/(1+γ) for white noise, → 1 − 1/D_amb for rank 1.

    D_amb defaults to the size of x; for SAE latents pass the number of live latents.
    """
    return 1.0 - participation_ratio(x) / (d_amb or _np64(x).shape[0])


def rho_info(
    eigvals: Float[Array, " r"], sigma2: float | None = None, d_amb: int | None = None
) -> float:
    """1 − C/C_max of a Gaussian channel at noise σ² [inferred] (docs/methods.md#rho_info).

    C = ½ Σ ln(1 + λ_k/σ²), C_max = ½ D ln(1 + λ̄/σ²), λ̄ = Σλ/D: the same power spread evenly.
    σ² defaults to λ̄ (absolute units, not relative). Rotation invariant; in [0, 1) by Jensen.
    """
    ev = _np64(eigvals)
    d = d_amb or ev.shape[0]
    lam_bar = float(ev.sum()) / d
    if lam_bar <= 0:
        return math.nan
    s2 = lam_bar if sigma2 is None else sigma2
    return 1.0 - float(np.log1p(ev / s2).sum()) / (d * math.log1p(lam_bar / s2))


def rho_offdiag(cov_DD: Float[Array, "d d"]) -> float:
    """1 − Σ_k Σ_kk²/‖Σ‖_F² [inferred]: off-diagonal mass, 0 iff the units are uncorrelated.

    The only basis-dependent measure here: it changes under rotation, α, PR and rho_info do not.
    """
    cov_DD = _np64(cov_DD)
    fro2 = float((cov_DD * cov_DD).sum())
    return 1.0 - float((np.diag(cov_DD) ** 2).sum()) / fro2 if fro2 > 0 else math.nan


def smoothness_threshold(d_manifold: float) -> float:
    """Stringer's bound α_crit = 1 + 2/d: a differentiable code on a d-manifold needs α > α_crit."""
    return 1.0 + 2.0 / d_manifold


def redundancy_summary(
    stats: CovarianceAccumulator | Float[Array, "d d"],
    n_samples: int | None = None,
    d_amb: int | None = None,
    k_lo: int = 11,
    k_hi: int | None = None,
    d_manifold: float = math.inf,
    n_keep: int = 1000,
    groups: Sequence[CovarianceAccumulator] | None = None,
    n_boot: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """The redundancy record (docs/methods.md#redundancy-suite) as plain floats/lists (NaN → None),
    ready for json.dumps.

    d_manifold sets the smoothness verdict α > 1 + 2/d (default ∞: the LM test α > 1).
    groups (per-sequence or per-shard accumulators) adds a basic-bootstrap alpha_ci95 and the
    bootstrap's bias estimate alpha_boot_bias (see bootstrap_alpha).
    H_random/H_basis are left None for the caller (sae.analysis.smoothness).
    """
    if isinstance(stats, CovarianceAccumulator):
        n_samples = n_samples or stats.n
        stats = stats.cov()
    cov_DD = _np64(stats)
    ev = eigenspectrum(cov_DD)
    fit = fit_power_law(ev, k_lo, k_hi, n_samples)
    ci: tuple[float, float] | None = None
    bias: float | None = None
    if groups is not None:
        boot = bootstrap_alpha(groups, n_boot, seed, *fit.fit_range)
        ci, bias = boot.ci95, boot.bias
    d = d_amb or cov_DD.shape[0]
    lam_bar = float(ev.sum()) / d
    alpha_crit = smoothness_threshold(d_manifold)
    pr = participation_ratio(cov_DD)
    record = {
        "n": n_samples,
        "d": cov_DD.shape[0],
        "d_amb": d,
        "eigvals": ev[:n_keep],
        **fit._asdict(),
        "alpha_ci95": ci,
        "alpha_boot_bias": bias,
        "alpha_crit": alpha_crit,
        "smooth_possible": None if math.isnan(fit.alpha) else bool(fit.alpha > alpha_crit),
        "PR": pr,
        "PR_over_d": pr / d,
        "eff_rank": effective_rank(ev),
        "n90": n_for_variance(ev, 0.9),
        "rho_PR": 1.0 - pr / d,
        "rho_info": rho_info(ev, None, d),
        "rho_info_0.1": rho_info(ev, 0.1 * lam_bar, d) if lam_bar > 0 else math.nan,
        "rho_offdiag": rho_offdiag(cov_DD),
        "H_random": None,
        "H_basis": None,
    }
    return jsonable(record)


def redundancy_summary_top(
    top_eigvals: Float[Array, " k"],
    n_samples: int,
    d_amb: int,
    trace: float,
    fro2: float,
    diag_sq_sum: float,
    k_lo: int = 11,
    d_manifold: float = math.inf,
) -> dict[str, Any]:
    """The redundancy record when only the leading eigenvalues are known (SAE latents too many for
    eigh).

    trace = tr Σ, fro2 = ‖Σ‖_F² and diag_sq_sum = Σ_k Σ_kk² come from the streamed moments, so
    PR, rho_PR and rho_offdiag are exact (no eigendecomposition is needed for them). The fit
    window is the full-spectrum default, min(500, ⌊d_amb/2⌋, ⌊n/20⌋), capped at the ranks known.
    eff_rank and rho_info need every eigenvalue and are None; n90 is None unless the known ones
    already reach 90% of tr Σ.
    """
    ev = np.sort(_np64(top_eigvals))[::-1]
    k_hi = min(default_fit_window(d_amb, n_samples, k_lo)[1], ev.size)
    fit = fit_power_law(ev, k_lo, k_hi)
    cum = np.cumsum(ev)
    reached = trace > 0 and cum[-1] >= 0.9 * trace * (1 - 1e-12)
    pr = trace**2 / fro2 if fro2 > 0 else math.nan
    alpha_crit = smoothness_threshold(d_manifold)
    return jsonable({
        "n": n_samples, "d": d_amb, "d_amb": d_amb, "eigvals": ev, **fit._asdict(),
        "alpha_ci95": None, "alpha_boot_bias": None, "alpha_crit": alpha_crit,
        "smooth_possible": None if math.isnan(fit.alpha) else bool(fit.alpha > alpha_crit),
        "PR": pr, "PR_over_d": pr / d_amb, "eff_rank": None,
        "n90": int(np.searchsorted(cum, 0.9 * trace * (1 - 1e-12)) + 1) if reached else None,
        "rho_PR": 1.0 - pr / d_amb, "rho_info": None, "rho_info_0.1": None,
        "rho_offdiag": 1.0 - diag_sq_sum / fro2 if fro2 > 0 else math.nan,
        "H_random": None, "H_basis": None, "top_k_only": int(ev.size),
    })  # fmt: skip


# --- spectral fidelity of an SAE reconstruction (docs/methods.md#spectral-fidelity) ------


class SpectralFidelity(NamedTuple):
    alpha_x: float
    alpha_x_hat: float
    delta_alpha: float
    """α(X̂) − α(X)"""
    pr_ratio: float
    """PR(X̂)/PR(X)"""
    k: np.ndarray
    """[K] numbers of top PCs of X"""
    fvu_k: np.ndarray
    """[K] E‖P_k(X − X̂)‖² / E‖P_k X_c‖²: where in X's spectrum the SAE error lives"""


def spectral_fidelity_from_stats(
    acc_x: CovarianceAccumulator,
    acc_x_hat: CovarianceAccumulator,
    acc_err: CovarianceAccumulator,
    k_values: Sequence[int] | None = None,
    k_lo: int = 11,
    k_hi: int | None = None,
) -> SpectralFidelity:
    """Streaming form: accumulators of X, X̂ and E = X − X̂ over the same rows [inferred metric].

    The numerator uses E's uncentred second moment (a constant error offset counts as error);
    the denominator X's centred one, both normalised by n.
    """
    ev_x, u_DD = _eigh_desc(acc_x.cov(ddof=0), vectors=True)
    ev_xh = eigenspectrum(acc_x_hat.cov())
    n = acc_x.n
    fit_x = fit_power_law(ev_x, k_lo, k_hi, n)
    fit_xh = fit_power_law(ev_xh, *fit_x.fit_range)  # same window, so Δα is not a window effect
    u_DD_t = torch.from_numpy(u_DD)
    err_per_pc = ((_t64(acc_err.gram(), torch.device("cpu")) @ u_DD_t) * u_DD_t).sum(0).numpy()
    d = ev_x.shape[0]
    if k_values is None:
        k_values = np.unique(np.round(np.geomspace(1, d, 30)).astype(int))
    k = np.asarray(k_values, dtype=int)
    with np.errstate(divide="ignore", invalid="ignore"):
        fvu = np.cumsum(err_per_pc)[k - 1] / np.cumsum(ev_x)[k - 1]
    pr_ratio = participation_ratio(acc_x_hat.cov()) / participation_ratio(ev_x)
    return SpectralFidelity(fit_x.alpha, fit_xh.alpha, fit_xh.alpha - fit_x.alpha, pr_ratio, k, fvu)


def spectral_fidelity(
    x_ND: Float[Array, "n d"],
    x_hat_ND: Float[Array, "n d"],
    k_values: Sequence[int] | None = None,
    k_lo: int = 11,
    k_hi: int | None = None,
) -> SpectralFidelity:
    """α(X̂) − α(X), PR(X̂)/PR(X) and the FVU_k curve for in-memory X and X̂
    (docs/methods.md#spectral-fidelity)."""
    x_ND, x_hat_ND = _t64(x_ND), _t64(x_hat_ND)
    accs = [CovarianceAccumulator().update(a) for a in (x_ND, x_hat_ND, x_ND - x_hat_ND)]
    return spectral_fidelity_from_stats(*accs, k_values=k_values, k_lo=k_lo, k_hi=k_hi)


def jsonable(obj: Any) -> Any:
    """NamedTuples → dicts, arrays → lists, numpy scalars → Python, NaN/inf → None (strict JSON)."""
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        obj = obj._asdict()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
