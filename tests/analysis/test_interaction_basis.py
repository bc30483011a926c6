"""Known answers of the Local Interaction Basis (docs/methods.md#interaction-basis): a linear layer
gives a diagonal graph, LIB does not see reparametrisations or duplicated neurons, stochastic
sources converge to the exact M′, float32 agrees with float64."""

from __future__ import annotations

import pytest
import torch

from sae.analysis.interaction_basis import (
    Moments,
    degeneracy,
    eig_desc,
    firing_redundancy,
    fold,
    lib_basis,
    pca_basis,
)
from sae.analysis.interaction_jacobian import (
    chain_bases,
    edge_sums,
    ig_rows,
    jacobian_second_moment,
    mlp_jacobian,
    mlp_section,
    perspective,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
T0 = torch.tensor([0])


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layer_pair(section, f_NF, centre: bool, out_basis=None):
    """(input LIB, output basis, E/n) of one section on flat samples (T = 1)."""
    f_BTF = f_NF[:, None, :]
    g = section(f_BTF)
    out = out_basis or pca_basis(Moments(g.shape[-1]).add(g), centre=centre)
    Mp, n = jacobian_second_moment(section, f_BTF, out.C_FK.to(f_NF.dtype))
    lib = lib_basis(Moments(f_NF.shape[-1]).add(f_NF), Mp / n, centre=centre)
    rows = ig_rows(section, f_BTF, out.C_FK.to(f_NF.dtype), T0)
    es = edge_sums(rows, f_BTF, lib, T0)
    return lib, out, es.E_KoKi / es.n


def test_linear_layer_gives_a_diagonal_graph_with_edges_equal_to_lambda():
    """Known answer (docs/methods.md#interaction-basis): g = W f with the output in its PCA basis; the LIB-to-output Jacobian is
    diag(±1), so E is diagonal with E_kk = Λ_k = eigenvalues of the output Gram, and a rank-4 W
    gives rank(W̃ G̃ W̃ᵀ) = 1 + 4 directions (the folded constant is the extra one)."""
    g = _g(0)
    d = 8
    W = torch.randn(6, 4, generator=g, dtype=torch.float64) @ torch.randn(
        4, d, generator=g, dtype=torch.float64
    )
    f = fold(torch.randn(400, d, generator=g, dtype=torch.float64) * 2 + 0.5)
    section = mlp_section(W, None, torch.eye(6, dtype=torch.float64), None, act="identity")
    lib, out, E = _layer_pair(section, f, centre=False)
    assert lib.k == out.k == 5
    off = E - torch.diag(E.diagonal())
    assert off.abs().max() < 1e-12 * E.max()
    torch.testing.assert_close(E.diagonal(), lib.Lambda_K, rtol=1e-10, atol=0)
    torch.testing.assert_close(lib.Lambda_K, out.Lambda_K, rtol=1e-10, atol=0)
    fhat = lib.coords(f)
    torch.testing.assert_close(fhat.pow(2).mean(0), lib.Lambda_K, rtol=1e-10, atol=0)


@pytest.mark.parametrize("centre", [False, True])
def test_reparametrisation_with_redundant_neurons_leaves_lib_unchanged(centre):
    """The point of the method: f -> B f with an injective B (d = 6 -> 9, redundant units) and
    W1 -> W1 B⁺ leave the function (1e-12), Λ and |f̂| (1e-10) unchanged."""
    g = _g(1)
    d, h, o = 6, 10, 5
    W1, b1 = torch.randn(h, d, generator=g).double(), torch.randn(h, generator=g).double()
    W2, b2 = torch.randn(o, h, generator=g).double(), torch.randn(o, generator=g).double()
    x = torch.randn(500, d, generator=g).double() + 0.3
    B = torch.randn(9, d, generator=g).double()
    W1b = W1 @ torch.linalg.pinv(B)
    s1, s2 = mlp_section(W1, b1, W2, b2), mlp_section(W1b, b1, W2, b2)
    f1, f2 = fold(x), fold(x @ B.T)
    torch.testing.assert_close(s1(f1), s2(f2), rtol=0, atol=1e-12)
    out = pca_basis(Moments(o + 1).add(s1(f1)), centre=centre)
    lib1, _, E1 = _layer_pair(s1, f1, centre, out)
    lib2, _, E2 = _layer_pair(s2, f2, centre, out)
    assert lib1.k == lib2.k <= d + 1
    torch.testing.assert_close(lib2.Lambda_K, lib1.Lambda_K, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lib2.coords(f2).abs(), lib1.coords(f1).abs(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(E2, E1, rtol=1e-9, atol=1e-12)


def test_duplicated_neurons_add_no_directions():
    """Rank-deficient inputs (a neuron duplicated, one zero): PCA and LIB keep the same number of
    directions and the same Λ; degeneracy 1 counts the two added units."""
    g = _g(2)
    d = 5
    x = torch.randn(300, d, generator=g).double()
    W1, W2 = torch.randn(7, d, generator=g).double(), torch.randn(4, 7, generator=g).double()
    dup = torch.cat([x, x[:, :1], torch.zeros(300, 1, dtype=torch.float64)], 1)
    W1d = torch.cat([W1, torch.zeros(7, 2, dtype=torch.float64)], 1)
    s, sd = mlp_section(W1, None, W2, None), mlp_section(W1d, None, W2, None)
    out = pca_basis(Moments(5).add(s(fold(x))), centre=True)
    lib, _, _ = _layer_pair(s, fold(x), True, out)
    libd, _, _ = _layer_pair(sd, fold(dup), True, out)
    assert libd.k == lib.k
    torch.testing.assert_close(libd.Lambda_K, lib.Lambda_K, rtol=1e-9, atol=1e-12)
    mom = Moments(d + 3).add(fold(dup))
    assert pca_basis(mom, centre=True).k == d + 1
    deg = degeneracy(mom.gram, None)
    assert deg.activation_degeneracy == 2 and deg.rank_gram == d


def _toy_attention(W_DD: torch.Tensor):
    """A causal softmax-mixing section on [B, T, d]: enough to need positions in M′."""

    def fn(f_BTD):
        T = f_BTD.shape[1]
        scores = f_BTD @ W_DD @ f_BTD.transpose(1, 2) / f_BTD.shape[-1] ** 0.5
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.tanh(att @ f_BTD) + f_BTD

    return fn


def test_stochastic_sources_converge_to_the_exact_mprime():
    """Rademacher sources over (position, output node) are unbiased: the relative error of M′
    falls roughly as 1/√R (R = 16 -> 1024: at least 4× smaller) and is < 6% at R = 1024."""
    g = _g(3)
    d, T = 4, 5
    section = perspective(_toy_attention(torch.randn(d, d, generator=g).double()))
    f = fold(torch.randn(6, T, d, generator=g).double())
    C = torch.linalg.qr(torch.randn(d + 1, d + 1, generator=g).double())[0]
    exact, n = jacobian_second_moment(section, f, C)
    assert n == 6 * T

    def err(R, seed):
        est, _ = jacobian_second_moment(section, f, C, sources=R, generator=_g(seed))
        return float((est - exact).norm() / exact.norm())

    e16 = sum(err(16, s) for s in range(4)) / 4
    e1024 = sum(err(1024, s) for s in range(4)) / 4
    assert e1024 < 0.06 and e16 > 4 * e1024


def test_analytic_mlp_jacobian_matches_autograd():
    """mlp_jacobian (W2 diag(σ′) [b1 | W1], b2 on the constant) equals the torch.func Jacobian,
    and the M′ it gives equals jacobian_second_moment's."""
    g = _g(4)
    W1, b1 = torch.randn(9, 5, generator=g).double(), torch.randn(9, generator=g).double()
    W2, b2 = torch.randn(3, 9, generator=g).double(), torch.randn(3, generator=g).double()
    f = fold(torch.randn(20, 5, generator=g).double())
    section = mlp_section(W1, b1, W2, b2)
    J = torch.func.vmap(torch.func.jacrev(section))(f)
    torch.testing.assert_close(mlp_jacobian(W1, b1, W2, b2, f), J, rtol=1e-12, atol=1e-12)
    C = torch.randn(4, 4, generator=g).double()
    CJ = C.T @ J
    want = torch.einsum("nkf,nkg->fg", CJ, CJ)
    got, n = jacobian_second_moment(section, f[:, None], C)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    assert n == 20


def test_float32_and_float64_agree():
    """A ReLU MLP layer pair computed from float32 activations and Jacobians gives the float64 Λ
    and edges to 1e-4 relative (moments and eigendecompositions are float64 in both)."""
    g = _g(5)
    W1, b1 = torch.randn(16, 8, generator=g), torch.randn(16, generator=g)
    W2, b2 = torch.randn(6, 16, generator=g), torch.randn(6, generator=g)
    x = torch.randn(500, 8, generator=g) + 0.2
    res = {}
    for dt in (torch.float32, torch.float64):
        s = mlp_section(W1.to(dt), b1.to(dt), W2.to(dt), b2.to(dt))
        out = pca_basis(Moments(7).add(s(fold(x.double()))), centre=True)
        res[dt] = _layer_pair(s, fold(x.to(dt)), True, out)
    lib32, _, E32 = res[torch.float32]
    lib64, _, E64 = res[torch.float64]
    assert lib32.k == lib64.k
    torch.testing.assert_close(lib32.Lambda_K, lib64.Lambda_K, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(E32, E64, rtol=1e-4, atol=1e-6 * float(E64.max()))


def test_eig_desc_threshold_is_relative():
    """Scaling a matrix by 1e-20 keeps the same count of eigenvalues (relative threshold)."""
    A = torch.diag(torch.tensor([1.0, 1e-3, 1e-13, 0.0], dtype=torch.float64))
    assert len(eig_desc(A)[0]) == 2 and len(eig_desc(A * 1e-20)[0]) == 2


def test_firing_redundancy_counts_units_firing_on_the_same_inputs():
    """Degeneracy 3: two copies of a unit's firing pattern and a scaled copy (same pattern) add 2
    exact redundancies; a unit differing on 1 of 5000 inputs is a near duplicate only."""
    g = _g(6)
    z = torch.randn(5000, 4, generator=g)
    z = torch.cat([z, z[:, :1], 3 * z[:, :1], z[:, 1:2].clone()], 1)
    z[0, -1] = -z[0, 1].abs() if z[0, 1] > 0 else z[0, 1].abs()  # flip one input
    r = firing_redundancy(z > 0)
    assert r["units"] == 7 and r["distinct_patterns"] == 5 and r["redundancy_exact"] == 2
    assert r["redundancy_near"] == 3


def _chain(act: str, seed: int):
    g = _g(seed)
    widths = [5, 7, 4, 3]
    secs = [
        mlp_section(
            torch.randn(h, w, generator=g).double(),
            torch.randn(h, generator=g).double(),
            torch.randn(o, h, generator=g).double(),
            torch.randn(o, generator=g).double(),
            act=act,
        )  # fmt: skip
        for w, h, o in zip(widths[:-1], [9, 9, 9], widths[1:], strict=True)
    ]
    fs = [fold(torch.randn(300, 1, widths[0], generator=g).double() + 0.2)]
    for s in secs:
        fs.append(s(fs[-1]))
    return secs, fs


def test_lib_target_output_equals_next_layer_on_a_linear_chain_and_not_on_a_relu_one():
    """Known answer for `target` (docs/methods.md#lib): on a chain of affine sections M′ towards
    the output equals M′ towards the next layer's LIB coordinates (C^{l+1}C^{l+1 ᵀ} is layer
    l+1's M′ on the data span), so Λ agrees to 1e-7 at every layer; on a ReLU chain the two
    differ before the last hidden layer (by 0.18 of the largest Λ) and agree at it."""
    secs, fs = _chain("identity", 4)
    nl = chain_bases(secs, fs, target="next_layer", centre=False)
    out = chain_bases(secs, fs, target="output", centre=False)
    assert [b.k for b in nl] == [b.k for b in out]
    for a, b in zip(nl[:-1], out[:-1], strict=True):
        torch.testing.assert_close(b.Lambda_K, a.Lambda_K, rtol=1e-7, atol=1e-12)
    secs, fs = _chain("relu", 5)
    nl = chain_bases(secs, fs, target="next_layer", centre=True)
    out = chain_bases(secs, fs, target="output", centre=True)
    torch.testing.assert_close(out[2].Lambda_K, nl[2].Lambda_K, rtol=1e-10, atol=1e-12)
    rel = (out[0].Lambda_K - nl[0].Lambda_K).abs().max() / nl[0].Lambda_K.max()
    assert rel > 0.05  # measured 0.18
    with pytest.raises(ValueError, match="target='input'"):
        chain_bases(secs, fs, target="input")
