"""Known answers for sae.analysis.descramble (docs/methods.md#descrambler)."""

import math

import pytest
import torch

from sae.analysis.descramble import (
    accumulate_hht,
    brockett_bound,
    descrambled_weights,
    descrambler,
    eta,
    fourier_derivative,
    path_difference,
    seriate,
    smoothness_operator,
)

F64 = torch.float64
N_H = 32


def random_orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q


@pytest.fixture(scope="module")
def scrambled():
    """Scramble-recover setup: n_h = 32, path L, smooth signals s = T diag(0.8^k) z, n = 50,000, H =
    Q S."""
    g = torch.Generator().manual_seed(0)
    L = smoothness_operator(N_H, "path")
    _, T = torch.linalg.eigh(L)
    S = (
        T
        @ torch.diag(0.8 ** torch.arange(N_H, dtype=F64))
        @ torch.randn(N_H, 50_000, generator=g, dtype=F64)
    )
    Q = random_orthogonal(N_H, g)
    H = Q @ S
    return L, T, Q, S, H, accumulate_hht(H.T.split(4096))


def test_fourier_derivative_is_spectral_derivative():
    """Pins: a wrong sign, grid or scaling of the periodic derivative (d/dθ sin 3θ = 3 cos 3θ)."""
    for n in (16, 17):
        th = torch.arange(n, dtype=F64) * 2 * math.pi / n
        D = fourier_derivative(n)
        torch.testing.assert_close(D @ torch.sin(3 * th), 3 * torch.cos(3 * th), atol=1e-12, rtol=0)
        torch.testing.assert_close(D, -D.T, atol=1e-13, rtol=0)  # real antisymmetric
    mu = torch.linalg.eigvalsh(smoothness_operator(8, "fourier"))
    torch.testing.assert_close(
        mu, torch.tensor([0, 0, 1, 1, 4, 4, 9, 9], dtype=F64), atol=1e-10, rtol=0
    )


def test_path_operator_spectrum_is_dct():
    """Pins: the Neumann path Laplacian (eigenvalues 2 − 2cos(πk/n), DCT-II eigenvectors)."""
    n = 12
    D = path_difference(n)
    assert D.shape == (n - 1, n)
    mu, T = torch.linalg.eigh(smoothness_operator(n, "path"))
    k = torch.arange(n, dtype=F64)
    torch.testing.assert_close(mu, 2 - 2 * torch.cos(math.pi * k / n), atol=1e-12, rtol=0)
    dct1 = torch.cos(math.pi * 1 * (torch.arange(n, dtype=F64) + 0.5) / n)
    assert abs(float(T[:, 1] @ dct1)) / float(dct1.norm()) > 1 - 1e-12


def test_streaming_hht_matches_dense():
    """Pins: dropped or double-counted batches in the streaming HHᵀ accumulator."""
    g = torch.Generator().manual_seed(1)
    H_BH = torch.randn(1000, 9, generator=g)
    torch.testing.assert_close(accumulate_hht(H_BH.split(128)), H_BH.double().T @ H_BH.double())
    with pytest.raises(ValueError, match="empty"):
        accumulate_hht([])


@pytest.mark.parametrize("kind", ["path", "fourier"])
def test_brockett_bound_reached(scrambled, kind):
    """Pins: pairing the largest PC with the roughest mode (or any misordering) in P* = T Uᵀ."""
    *_, hht = scrambled
    L = smoothness_operator(N_H, kind)
    d = descrambler(hht, L)
    bound = brockett_bound(d.mu_H, d.sigma_sq_H)
    assert abs(eta(d.P_HH, L, hht) - bound) <= 1e-12 * bound
    assert abs(d.eta_star - bound) <= 1e-12 * bound
    torch.testing.assert_close(d.P_HH @ d.P_HH.T, torch.eye(N_H, dtype=F64), atol=1e-12, rtol=0)


def test_identity_and_random_orthogonal_are_much_rougher(scrambled):
    """Pins: a descrambler that is not optimal (identity / random P give > 20× η*)."""
    L, *_, hht = scrambled
    d = descrambler(hht, L)
    g = torch.Generator().manual_seed(2)
    assert eta(torch.eye(N_H, dtype=F64), L, hht) > 20 * d.eta_star
    for _ in range(3):
        assert eta(random_orthogonal(N_H, g), L, hht) > 20 * d.eta_star


def test_scramble_recover(scrambled):
    """Pins: recovering the scrambling rotation, |diag(Tᵀ P* Q T)| ≥ 0.999 for all 32 modes
    (0.8^k decay keeps every mode well separated)."""
    L, T, Q, _, _, hht = scrambled
    d = descrambler(hht, L)
    assert float((T.T @ d.P_HH @ Q @ T).diagonal().abs().min()) >= 0.999


def test_descrambled_weights_isotropic_inputs():
    """Pins: for E[xxᵀ] = I, P*W = T Σ_W V_Wᵀ: rows orthogonal, norms = σ_W in frequency order."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(10, 6, generator=g, dtype=F64)
    b = torch.randn(10, generator=g, dtype=F64)
    L = smoothness_operator(10, "path")
    d = descrambler(W @ W.T, L)  # population HHᵀ for isotropic x, no bias
    out = descrambled_weights(d.P_HH, W, b)
    sig = torch.linalg.svdvals(W)
    T = d.T_HH
    # In the mode basis the descrambled Gram is diag(σ²) with σ descending along smoothness.
    gram = T.T @ out.W_HD @ out.W_HD.T @ T
    expected = torch.zeros(10, dtype=F64)
    expected[:6] = sig**2
    torch.testing.assert_close(gram, torch.diag(expected), atol=1e-10, rtol=0)
    torch.testing.assert_close(out.b_H, d.P_HH @ b)


@pytest.mark.parametrize("method", ["fiedler", "angle"])
def test_seriation_recovers_neuron_order(scrambled, method):
    """Pins: the permutation-restricted approximation (seriation + 2-opt) on permuted smooth
    signals recovers the path order up to reversal, and η(seriation) ≥ η* (lower bound)."""
    L, _, _, S, _, _ = scrambled
    g = torch.Generator().manual_seed(4)
    perm = torch.randperm(N_H, generator=g)
    Sp = S[perm]
    hht = Sp @ Sp.T
    se = seriate(hht, method)
    order = perm[se.perm_H].tolist()
    assert order in (list(range(N_H)), list(range(N_H))[::-1])
    assert se.eta >= descrambler(hht, L).eta_star
    torch.testing.assert_close(se.P_HH @ Sp, S[order])


def test_bad_inputs_fail_clearly():
    """Pins: silent shape mismatch between HHᵀ and L."""
    with pytest.raises(ValueError, match="same square"):
        descrambler(torch.eye(3), torch.eye(4))
    with pytest.raises(ValueError, match="valid kinds"):
        smoothness_operator(4, "chebyshev")  # type: ignore[arg-type]


def test_float32_batches_agree_with_float64(scrambled):
    """Pins: accumulating HHᵀ in the batch dtype (fp32 sums lose ~1e-4 over 50k samples)."""
    L, *_, H, hht64 = scrambled
    hht32 = accumulate_hht(H.T.float().split(4096))
    d32, d64 = descrambler(hht32, L), descrambler(hht64, L)
    assert d32.eta_star == pytest.approx(d64.eta_star, rel=1e-5)
    # Same principal directions up to sign (P* = T Uᵀ differs only through U's column signs).
    assert float((d32.U_HH.T @ d64.U_HH).diagonal().abs().min()) > 1 - 1e-5
