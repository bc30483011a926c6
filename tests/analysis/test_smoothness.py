"""Known answers for sae.analysis.smoothness (docs/methods.md#random-projection-hurst-test):
Stringer's sinusoid code, Brownian paths, smooth paths, jumps, and random-vs-basis directions.
Seeded, CPU, a few seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sae.analysis.smoothness import (
    geometric_lags,
    hurst_exponent,
    increment_kurtosis,
    predicted_hurst,
    random_unit_directions,
    sinusoid_code,
    smoothness_record,
    structure_function,
)
from sae.analysis.spectrum import CovarianceAccumulator, eigenspectrum, fit_power_law

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# measured once with T = 4096, 500 frequencies, lags 16-256, 200 random projections
MEASURED_H = {1.5: 0.28, 2.0: 0.50, 4.0: 0.98}


@pytest.fixture(scope="module")
def directions_RD() -> np.ndarray:
    return random_unit_directions(1000, 200, seed=0)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0])
def test_sinusoid_code_alpha_and_hurst(alpha, directions_RD):
    """Pins the sinusoid H table: α̂ within 0.05 of α (ranks 11-500) and H within 0.06 of the
    measured value; a wrong scale (k^−α instead of k^(−α/2)) or a lag/slope factor of 2 fails it."""
    F_TD = sinusoid_code(4096, 500, alpha)
    ev = eigenspectrum(CovarianceAccumulator().update(F_TD).cov())
    fit = fit_power_law(ev, 11, 500)
    assert abs(fit.alpha - alpha) < 0.05
    h = hurst_exponent(F_TD, directions_RD)
    assert list(h.lags) == list(geometric_lags(4096)) and h.lags[0] == 16 and h.lags[-1] == 256
    assert abs(h.H - MEASURED_H[alpha]) < 0.06
    assert abs(h.H - predicted_hurst(alpha)) < 0.06  # theory H = min(1, (α − 1)/2), d = 1
    assert h.verdict == ("smooth" if alpha == 4.0 else "rough")


def test_sinusoid_spectrum_is_exact_pairs():
    """Pins the code's construction: eigenvalue pairs ½k^(−α) for k = 1..n_freq, exactly."""
    ev = eigenspectrum(CovarianceAccumulator().update(sinusoid_code(512, 40, 2.0)).cov(ddof=0))
    k = np.arange(1, 41)
    assert np.allclose(ev, np.repeat(0.5 * k**-2.0, 2), rtol=1e-10, atol=1e-14)


def test_brownian_paths_have_half_hurst_and_gaussian_increments():
    """Pins H = ½ slope (not the slope) and the kurtosis normalisation (Gaussian → 0)."""
    rng = np.random.default_rng(1)
    F_PTD = np.cumsum(rng.standard_normal((4, 2048, 30)) * rng.uniform(0.1, 3, 30), axis=1)
    h = hurst_exponent(F_PTD, random_unit_directions(30, 50, seed=1))
    assert abs(h.H - 0.5) < 0.05 and abs(h.H_median - 0.5) < 0.05 and h.r2 > 0.99
    # unequal unit scales must not fake heavy tails: each direction is standardised first
    assert abs(increment_kurtosis(F_PTD)) < 0.3
    assert h.verdict == "rough"


def test_smooth_path_has_hurst_one():
    """Pins the smooth end: a differentiable path gives H ≈ 1 and verdict smooth."""
    t = np.linspace(0, 1, 1024)[:, None]
    F_TD = np.sin(2 * np.pi * t * np.array([0.3, 0.7, 1.1])) + t**2
    h = hurst_exponent(torch.from_numpy(F_TD).float())  # torch float32 input accepted
    assert abs(h.H - 1.0) < 0.05 and h.verdict == "smooth"


def test_isolated_jumps_are_told_from_roughness():
    """Pins the jump diagnosis: step paths (TopK-like switching) have heavy-tailed increments."""
    rng = np.random.default_rng(2)
    F_PTD = np.cumsum(rng.random((3, 4096, 20)) < 0.003, axis=1).astype(np.float64)
    h = hurst_exponent(F_PTD)
    assert h.H < 0.75 and h.increment_kurtosis > 10 and h.verdict == "jumps"


def test_structure_function_known_values():
    """Pins S(Δ) on a linear path: r(t+Δ) − r(t) = Δ·(wᵀv), so S = Δ²·mean_w (wᵀv)²."""
    v_D = np.array([3.0, 4.0])
    F_TD = np.arange(100)[:, None] * v_D
    w_RD = np.array([[1.0, 0.0], [0.0, 2.0]])  # rows normalised: the second becomes e_2
    S_L = structure_function(F_TD, w_RD, lags=np.array([1, 5]))
    assert np.allclose(S_L, np.array([1, 25]) * (9 + 16) / 2, rtol=1e-12)
    assert np.allclose(structure_function(F_TD, None, np.array([2])), [4 * 12.5], rtol=1e-12)


def test_random_unit_directions():
    """Pins direction sampling: unit rows, reproducible for a seed, roughly isotropic."""
    w_RD = random_unit_directions(64, 2000, seed=3)
    assert np.allclose(np.linalg.norm(w_RD, axis=1), 1, atol=1e-12)
    assert np.array_equal(w_RD, random_unit_directions(64, 2000, seed=3))
    assert np.abs(w_RD.mean(0)).max() < 0.02


def test_basis_privilege_needs_per_direction_hurst():
    """19 smooth units + 1 rough unit: per-direction H separates the basis (median ≈ 1) from
    random directions (all rough); the pooled S cannot (E_w (wᵀv)² = ‖v‖²/d for any basis), which
    is the bug this pins if basis_privileged were read off the pooled H."""
    rng = np.random.default_rng(4)
    t = np.arange(4096) / 4096
    smooth_TD = np.sin(2 * np.pi * t[:, None] * rng.uniform(0.5, 2, 19) + rng.uniform(0, 6, 19))
    rough_T1 = np.cumsum(rng.standard_normal(4096))[:, None] * 0.2
    rec = smoothness_record(np.concatenate([smooth_TD, rough_T1], 1), n_random=100, seed=0)
    assert rec["H_basis_median"] > 0.95 and rec["H_random_median"] < 0.75
    assert rec["basis_privileged"] is True
    assert abs(rec["H_basis"] - rec["H_random"]) < 0.1  # pooled values agree, as argued
    json.dumps(rec, allow_nan=False)


def test_isotropic_code_has_no_privileged_basis():
    """Pins the null: independent Brownian units, basis and random directions give the same H."""
    F_PTD = np.cumsum(np.random.default_rng(5).standard_normal((2, 2048, 30)), axis=1)
    rec = smoothness_record(F_PTD, n_random=60)
    assert rec["basis_privileged"] is False
    assert abs(rec["H_random"] - 0.5) < 0.06 and abs(rec["H_basis"] - 0.5) < 0.06


def test_predicted_hurst():
    """Pins H = min(1, d(α − 1)/2) and its border α = 1 + 2/d (Stringer's bound)."""
    assert predicted_hurst(2.0) == 0.5 and predicted_hurst(3.0) == 1.0
    assert predicted_hurst(1.5, d_manifold=4) == 1.0 and predicted_hurst(0.5) == 0.0
    assert math.isclose(predicted_hurst(1.25, d_manifold=8), 1.0)
