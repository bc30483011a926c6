"""Edges, sparsity and modularity of the interaction graph (docs/methods.md#interaction-basis):
IG completeness, a block-diagonal modular MLP, the sparsity proxies' known values, the bisection
and the edge ablation."""

from __future__ import annotations

import pytest
import torch

from sae.analysis.interaction_basis import Moments, fold, lib_basis, neuron_basis, pca_basis
from sae.analysis.interaction_graph import (
    ablate_edges,
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
    mlp_section,
    perspective,
    sae_edge_sums,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _gelu_mlp(seed):
    g = _g(seed)
    W1, b1 = torch.randn(12, 5, generator=g).double(), torch.randn(12, generator=g).double()
    W2, b2 = torch.randn(4, 12, generator=g).double(), torch.randn(4, generator=g).double()
    return mlp_section(W1, b1, W2, b2, act="gelu")


def test_integrated_gradients_are_complete_with_gauss_legendre():
    """Σ_j A_ij = ĝ_i(f̃) − ĝ_i(0) for a GELU MLP with folded biases (not homogeneous) with 24
    Gauss–Legendre points (1e-6 relative); the single-point gradient misses it by > 1e-3; for a
    homogeneous section (perspective) the single point is exact (1e-10)."""
    section = _gelu_mlp(0)
    f = fold(torch.randn(30, 1, 5, generator=_g(1)).double())
    C = torch.linalg.qr(torch.randn(5, 5, generator=_g(2)).double())[0]
    basis = neuron_basis(6)
    t = torch.tensor([0])
    want = (section(f) - section(torch.zeros_like(f))) @ C  # [B, 1, K]
    for rule, tol, ok in (("gauss_legendre", 1e-6, True), ("gradient", 1e-3, False)):
        A = edge_sums(ig_rows(section, f, C, t, rule, points=24), f, basis, t).A_tKoBKi
        err = (A.sum(-1)[0].T - want[:, 0]).abs().max() / want.abs().max()
        assert (err < tol) == ok, (rule, float(err))
    ps = perspective(lambda x: torch.nn.functional.gelu(x @ torch.ones(5, 5).double()))
    C6 = torch.linalg.qr(torch.randn(6, 6, generator=_g(3)).double())[0]
    A = edge_sums(ig_rows(ps, f, C6, t), f, basis, t).A_tKoBKi
    torch.testing.assert_close(A.sum(-1)[0].T, (ps(f) @ C6)[:, 0], rtol=1e-10, atol=1e-10)


def _modular(seed: int):
    """rib's ModularMLP: width 8, two blocks of 4, block-diagonal weights, independent Gaussian
    blocks with unequal variances (so eigenvalues do not tie across blocks)."""
    g = _g(seed)

    def blockdiag():
        return torch.block_diag(*(torch.randn(4, 4, generator=g).double() for _ in range(2)))

    W1, W2 = blockdiag(), blockdiag()
    b1, b2 = torch.randn(8, generator=g).double(), torch.randn(8, generator=g).double()
    scale = torch.tensor([1.0, 1.3, 0.7, 1.1, 2.0, 2.6, 1.7, 2.2], dtype=torch.float64)
    # every pair of block samples (a Cartesian product): the empirical distribution is then
    # exactly a product of the two blocks, so sample cross-block covariances are exactly 0
    a, b = torch.randn(45, 4, generator=g).double(), torch.randn(45, 4, generator=g).double()
    x = torch.cat([a.repeat_interleave(45, 0), b.repeat(45, 1)], 1) * scale
    relu1 = mlp_section(W1, b1, torch.eye(8, dtype=torch.float64), None)
    relu2 = mlp_section(W2, b2, torch.eye(8, dtype=torch.float64), None)
    return x, relu1, relu2


def _lib_chain(x, sections):
    """Node layers f0 -> f1 -> f2 (output in centred PCA), LIB backwards, edges (E/n) forwards."""
    fs = [fold(x)[:, None]]
    for s in sections:
        fs.append(s(fs[-1]))
    bases = [pca_basis(Moments(9).add(fs[-1]), centre=True)]
    for f, s in zip(fs[-2::-1], sections[::-1], strict=True):
        Mp, n = jacobian_second_moment(s, f, bases[0].C_FK)
        bases.insert(0, lib_basis(Moments(9).add(f), Mp / n, centre=True))
    t = torch.tensor([0])
    E = []
    for li, s in enumerate(sections):
        es = edge_sums(ig_rows(s, fs[li], bases[li + 1].C_FK, t), fs[li], bases[li], t)
        E.append(es.E_KoKi / es.n)
    return bases, E


def _block_of(basis) -> torch.Tensor:
    """Which block (0/1) each non-constant node writes into (its write direction's support)."""
    w = basis.Cplus_KF[1:, 1:].abs()
    return (w[:, 4:].sum(1) > w[:, :4].sum(1)).long()


def test_modular_mlp_has_no_cross_block_edges_and_leiden_finds_the_two_modules():
    """Block-independent data through block-diagonal ReLU layers: every LIB direction lives in one
    block, cross-block edges are 0 to fp precision, and Leiden (γ = 0.5, log norm) returns exactly
    the two modules spanning all three node layers."""
    x, s1, s2 = _modular(0)
    bases, E = _lib_chain(x, [s1, s2])
    for b in bases:
        w = b.Cplus_KF[1:, 1:].abs()
        mixed = torch.minimum(w[:, :4].sum(1), w[:, 4:].sum(1)) / w.sum(1)
        assert mixed.max() < 1e-10
    for li, El in enumerate(E):
        bi, bo = _block_of(bases[li]), _block_of(bases[li + 1])
        cross = bo[:, None] != bi[None, :]
        inner = El[1:, 1:]
        assert inner[cross].max() < 1e-20 * inner.max()
        assert inner[~cross].max() > 0
    eps = [float(El[1:, 1:][El[1:, 1:] > 1e-12 * El.max()].min()) for El in E]
    out = leiden([b.k for b in bases], E, eps=eps, gamma=0.5)
    assert out["n_clusters"] == 2 and out["spans"] == [3, 3]
    assert sum(out["sizes"]) == sum(b.k - 1 for b in bases)
    for b, mem in zip(bases, out["membership"], strict=True):
        blocks = _block_of(b)
        labels = torch.tensor(mem[1:])
        for blk in (0, 1):
            assert len(labels[blocks == blk].unique()) == 1
        assert labels[blocks == 0][0] != labels[blocks == 1][0]
    assert out["modularity_q"] > 0.2


def test_sparsity_proxies_known_values():
    """Uniform mass: Gini 0, Hoyer 0, N_eff = N, k_0.9 = ⌈0.9N⌉. One edge: Gini 1 − 1/N, Hoyer 1,
    N_eff = 1, k_0.9 = k_0.99 = 1. The constant node's row and column are left out."""
    E = torch.ones(5, 9, dtype=torch.float64)
    E[0], E[:, 0] = 100.0, 100.0  # constant node: ignored
    s = sparsity(E)
    N = 4 * 8
    assert s["edges"] == N and s["gini"] == pytest.approx(0, abs=1e-12)
    assert s["hoyer"] == pytest.approx(0, abs=1e-12) and s["n_eff"] == pytest.approx(N)
    assert s["k_90"] == 29 and s["k_99"] == 32 and s["out_degree_participation"] == 1.0
    E = torch.zeros(5, 9, dtype=torch.float64)
    E[2, 3] = 7.0
    s = sparsity(E)
    assert s["gini"] == pytest.approx(1 - 1 / N) and s["hoyer"] == pytest.approx(1)
    assert s["n_eff"] == pytest.approx(1) and s["k_90"] == s["k_99"] == 1
    assert s["out_degree_participation"] == pytest.approx(1 / 4)
    c = mass_curve(E)
    assert c["mass"][0] == 1.0


def test_min_kept_bisection_finds_the_threshold():
    """A loss that drops below tol from k = 37 on: bisection returns 37 in O(log n) calls; a loss
    that never gets there returns n."""
    k, seen = min_kept(lambda k: 1.0 if k < 37 else 0.0, 1000, 0.001)
    assert k == 37 and len(seen) <= 12
    assert min_kept(lambda k: 1.0, 50, 0.1)[0] == 50


def test_edge_ablation_keeps_the_output_with_all_edges_and_removes_dropped_ones():
    """Keeping every edge reproduces ĝ; dropping edge (i, j) of a linear section removes exactly
    Ĵ_ij f̂_j from output i and nothing from the others."""
    g = _g(7)
    W = torch.randn(4, 6, generator=g).double()
    fh = torch.randn(10, 6, generator=g).double()

    def sec(f):
        return f @ W.T

    full = torch.ones(4, 6, dtype=torch.bool)
    torch.testing.assert_close(ablate_edges(sec, fh, full), sec(fh))
    m = full.clone()
    m[2, 3] = False
    diff = sec(fh) - ablate_edges(sec, fh, m)
    want = torch.zeros(10, 4, dtype=torch.float64)
    want[:, 2] = W[2, 3] * fh[:, 3]
    torch.testing.assert_close(diff, want)
    E = torch.arange(24.0).reshape(4, 6)
    km = keep_mask(E, 3, True, True)
    assert km[0].all() and km[:, 0].all() and int(km[1:, 1:].sum()) == 3 and km[3, 5]


def test_sae_edges_are_complete_with_error_and_bias_nodes():
    """Latent, error and bias node attributions sum to ĝ for a homogeneous section (Euler), and
    equal the neuron-basis total, whatever the SAE reconstructs."""
    g = _g(8)
    d, m = 5, 12
    ps = perspective(lambda x: torch.relu(x @ torch.randn(d, d, generator=_g(9)).double()) + x)
    x = torch.randn(3, 4, d, generator=g).double()
    W_dec = torch.randn(m, d, generator=g).double()
    b_dec = torch.randn(d, generator=g).double()
    acts = torch.relu(torch.randn(3, 4, m, generator=g).double() - 0.8)
    err = x - (acts @ W_dec + b_dec)
    f = fold(x)
    C = torch.eye(d + 1, dtype=torch.float64)
    t = torch.arange(4)
    rows = ig_rows(ps, f, C, t)
    A = sae_edge_sums(rows, acts, W_dec, err, b_dec, t).A_tKoBKi
    want = ps(f).permute(1, 2, 0)  # [t, o, b]
    torch.testing.assert_close(A.sum(-1), want, rtol=1e-10, atol=1e-10)
    An = edge_sums(rows, f, neuron_basis(d + 1), t).A_tKoBKi
    torch.testing.assert_close(An.sum(-1), want, rtol=1e-10, atol=1e-10)


def _mixing_section(d: int, T: int):
    """A linear causal position-mixing block (attention with fixed weights): its Jacobian does
    not depend on the input, so an input position's share of the output is exactly linear."""
    mix = torch.tril(torch.rand(T, T, generator=_g(20), dtype=torch.float64) + 0.1)
    W = torch.randn(d, d, generator=_g(21)).double()
    return perspective(lambda x: torch.einsum("ts,bsd->btd", mix, x @ W))


def test_edges_leave_out_the_positions_the_bases_leave_out():
    """Issue 24: edges summed over every input position, BOS and special tokens included, while
    the moments, M′ and the SAE's usage exclude them; a BOS row of large norm (as in LMs) then
    dominated the edges, and its SAE error inflated the error share. With position 0 left out
    by keep_BT, scaling the BOS row by 1000 (and its SAE error with it) changes no edge."""
    d, m, B, T = 4, 6, 3, 5
    ps = _mixing_section(d, T)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[:, 0] = False
    t = torch.arange(T)
    W_dec = torch.randn(m, d, generator=_g(22)).double()
    b_dec = torch.randn(d, generator=_g(23)).double()
    acts = torch.relu(torch.randn(B, T, m, generator=_g(24)).double())
    x = torch.randn(B, T, d, generator=_g(25)).double()
    E, E_sae = [], []
    for bos in (1.0, 1000.0):
        xs = x.clone()
        xs[:, 0] *= bos
        err = xs - (acts @ W_dec + b_dec)
        f = fold(xs)
        rows = ig_rows(ps, f, torch.eye(d + 1, dtype=torch.float64), t)
        E.append(edge_sums(rows, f, neuron_basis(d + 1), t, keep).E_KoKi)
        E_sae.append(sae_edge_sums(rows, acts, W_dec, err, b_dec, t, keep).E_KoKi)
    torch.testing.assert_close(E[1], E[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(E_sae[1], E_sae[0], rtol=1e-10, atol=1e-10)


def test_edges_and_the_left_out_positions_add_up_to_the_output():
    """Completeness with left-out positions: Σ_j A_ij over the kept inputs plus `outside_part`
    (the left-out inputs' share) is ĝ, for a basis and for SAE nodes (1e-10)."""
    from sae.analysis.interaction_jacobian import outside_part

    d, m, B, T = 4, 6, 3, 5
    ps = _mixing_section(d, T)
    keep = torch.rand(B, T, generator=_g(26)) > 0.4
    t = torch.arange(T)
    W_dec = torch.randn(m, d, generator=_g(27)).double()
    b_dec = torch.randn(d, generator=_g(28)).double()
    acts = torch.relu(torch.randn(B, T, m, generator=_g(29)).double())
    x = torch.randn(B, T, d, generator=_g(30)).double()
    f = fold(x)
    rows = ig_rows(ps, f, torch.eye(d + 1, dtype=torch.float64), t)
    want = ps(f).permute(1, 2, 0) - outside_part(rows, f, keep)
    basis = pca_basis(Moments(d + 1).add(f.reshape(-1, d + 1)), centre=True)
    A = edge_sums(rows, f, basis, t, keep).A_tKoBKi
    torch.testing.assert_close(A.sum(-1), want, rtol=1e-10, atol=1e-10)
    err = x - (acts @ W_dec + b_dec)
    A = sae_edge_sums(rows, acts, W_dec, err, b_dec, t, keep).A_tKoBKi
    torch.testing.assert_close(A.sum(-1), want, rtol=1e-10, atol=1e-10)
