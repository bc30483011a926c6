"""Known answers (docs/methods.md#capacity) for sae.analysis.capacity. Rows are features (W_dec
layout)."""

import json
import math

import pytest
import torch

from sae.analysis.capacity import (
    block_structure,
    capacity_null,
    capacity_summary,
    classify_features,
    feature_capacity,
    frame_operator,
    neuron_polysemanticity,
)

F64 = torch.float64


def polygon(k: int) -> torch.Tensor:
    a = torch.arange(k, dtype=F64) * 2 * math.pi / k
    return torch.stack([a.cos(), a.sin()], 1)


def simplex(k: int) -> torch.Tensor:
    """k unit vectors of a regular simplex in R^{k−1}: centred basis vectors, expressed in an
    orthonormal basis of the sum-zero hyperplane."""
    E = torch.eye(k, dtype=F64) - 1.0 / k
    U, _, _ = torch.linalg.svd(E)
    V = E @ U[:, : k - 1]
    return V / V.norm(dim=1, keepdim=True)


def antiprism() -> torch.Tensor:
    # Square antiprism with height set for a tight frame: Σ z² = 8h² = 8/3 → h² = 1/3, r² = 2/3.
    r, h = math.sqrt(2 / 3), math.sqrt(1 / 3)
    top = [
        (r * math.cos(a), r * math.sin(a), h) for a in (0, 0.5 * math.pi, math.pi, 1.5 * math.pi)
    ]
    bot = [
        (r * math.cos(a + math.pi / 4), r * math.sin(a + math.pi / 4), -h)
        for a in (0, 0.5 * math.pi, math.pi, 1.5 * math.pi)
    ]
    return torch.tensor(top + bot, dtype=F64)


def block_example() -> torch.Tensor:
    """Triangle in span(e1,e2) ⊕ antipodal pair on e3 ⊕ a norm-2 vector on e4."""
    W = torch.zeros(6, 4, dtype=F64)
    W[:3, :2] = polygon(3)
    W[3, 2], W[4, 2], W[5, 3] = 1.0, -1.0, 2.0
    return W


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return Q


def dense_capacity(W_ND: torch.Tensor) -> torch.Tensor:
    G = W_ND @ W_ND.T
    return G.diagonal() ** 2 / (G @ G).diagonal()


def test_orthonormal_and_rotated_tight_frame():
    """Pins: capacity must be 1 per feature for an orthonormal basis and rotation invariant."""
    Q = random_orthogonal(16, 0)
    cap = feature_capacity(Q)
    torch.testing.assert_close(cap.capacity_N, torch.ones(16, dtype=F64), rtol=0, atol=1e-12)
    assert cap.rank == 16 and abs(float(cap.capacity_N.sum()) - 16) < 1e-10
    # A pentagon embedded in R^5 and rotated keeps C = 2/5 (tight frames are rotation-invariant).
    pent = torch.cat([polygon(5), torch.zeros(5, 3, dtype=F64)], 1) @ random_orthogonal(5, 1)
    torch.testing.assert_close(feature_capacity(pent).capacity_N, torch.full((5,), 0.4, dtype=F64))


@pytest.mark.parametrize(
    ("W", "expected"),
    [
        (torch.ones(3, 4, dtype=F64) / 2, [1 / 3] * 3),  # k identical vectors → 1/k
        (torch.tensor([[0.6, 0.8], [-0.6, -0.8]], dtype=F64), [0.5, 0.5]),  # antipodal pair
        (torch.tensor([[1.0, 0, 0], [2.0, 0, 0]], dtype=F64), [0.2, 0.8]),  # norms 1 and 2
    ],
)
def test_parallel_vectors(W, expected):
    """Pins: a norm-blind formula (which would give 1/2, 1/2 for norms 1 and 2)."""
    torch.testing.assert_close(feature_capacity(W).capacity_N, torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize(
    ("W", "value"),
    [
        (torch.eye(3, dtype=F64), 1.0),
        (simplex(4), 3 / 4),  # tetrahedron
        (simplex(3), 2 / 3),  # triangle
        (polygon(4), 1 / 2),  # square = two antipodal pairs
        (polygon(5), 2 / 5),  # pentagon
        (antiprism(), 3 / 8),  # square antiprism
    ],
    ids=["1", "3/4", "2/3", "1/2", "2/5", "3/8"],
)
def test_elhage_sticky_dimensionalities(W, value):
    """Pins: the capacity formula against Elhage's observed fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8."""
    cap = feature_capacity(W)
    torch.testing.assert_close(cap.capacity_N, torch.full((len(W),), value, dtype=F64))
    # Each of these is a tight frame, so ΣC equals its rank.
    assert abs(float(cap.capacity_N.sum()) - cap.rank) < 1e-10


def test_block_example_capacity_rayleigh_residual():
    """Pins: frame-operator Rayleigh quotients and residuals of the block example."""
    W = block_example() @ random_orthogonal(4, 2)  # any rotation leaves all of this unchanged
    cap = feature_capacity(W)
    expected = torch.tensor([2 / 3] * 3 + [0.5, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(cap.capacity_N, expected)
    torch.testing.assert_close(cap.rayleigh_N, torch.tensor([1.5] * 3 + [2, 2, 4.0], dtype=F64))
    assert float(cap.residual_N.max()) < 1e-12
    assert cap.rank == 4 and abs(float(cap.capacity_N.sum()) - 4) < 1e-12


def test_block_structure_of_block_example():
    """Pins: component search, block dims, tightness and leakage on an exact toy solution."""
    W = block_example() @ random_orthogonal(4, 3)
    bs = block_structure(W, tau=1e-6)
    assert bs.size_B.tolist() == [3, 2, 1]
    assert bs.dim_B.tolist() == [2, 1, 1]
    assert bs.label_N.tolist() == [0, 0, 0, 1, 1, 2]
    torch.testing.assert_close(bs.tightness_B, torch.ones(3, dtype=F64))
    # Leakage is a difference of squares, so its floor is √ε·‖W_b‖² ≈ 1e-7 (see BlockStructure).
    assert float(bs.leakage_B.max()) < 1e-6 and bs.leakage_fraction < 1e-14


def test_block_structure_chunked_union_and_leakage():
    """Pins: unions across chunks (chain 0–1–…) and the leakage identity of a non-orthogonal pair."""
    W = torch.zeros(5, 3, dtype=F64)
    W[0, 0] = W[4, 0] = 1.0  # features 0 and 4 are parallel but in different chunks
    W[1, 1] = 1.0
    W[2] = torch.tensor([0.0, 0.6, 0.8])  # overlaps feature 1 (cos 0.6)
    W[3, 2] = 1e-3  # tiny: excluded as ignored, but still interferes with feature 2
    exclude = classify_features(feature_capacity(W)).ignored_N
    assert exclude.tolist() == [False, False, False, True, False]
    bs = block_structure(W, tau=1e-6, exclude_N=exclude, chunk_size=2)
    assert bs.label_N.tolist() == [0, 1, 1, -1, 0]
    assert bs.size_B.tolist() == [2, 2] and bs.dim_B.tolist() == [1, 2]
    # Block 1 = {1, 2}: its only interference outside the block is (W_2·W_3)² = (0.8e-3)².
    torch.testing.assert_close(bs.leakage_B, torch.tensor([0.0, 0.8e-3], dtype=F64))


def test_sum_bounded_by_rank_equality_iff_block_semi_orthogonal():
    """Pins: ΣC ≤ rank(W) (not d), and saturation 1 only for block-semi-orthogonal frames."""
    g = torch.Generator().manual_seed(4)
    W = torch.randn(50, 10, generator=g, dtype=F64) @ torch.randn(10, 30, generator=g, dtype=F64)
    cap = feature_capacity(W)
    assert cap.rank == 10
    assert float(cap.capacity_N.sum()) < 10 - 1e-3  # generic: strict
    assert float(cap.residual_N.min()) > 1e-3  # no feature is an eigenvector of F
    perturbed = block_example() + 0.05 * torch.randn(6, 4, generator=g, dtype=F64)
    s = float(feature_capacity(perturbed).capacity_N.sum())
    assert s < feature_capacity(perturbed).rank - 1e-4


@pytest.mark.parametrize(("d", "m"), [(64, 64), (64, 512), (256, 256)])
def test_random_null(d, m):
    """Pins: the random-dictionary null dm/(d+m−1) within 2% (sampled once: 32.22/57.26/129.4)."""
    g = torch.Generator().manual_seed(d + m)
    W = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=F64), dim=1)
    total = float(feature_capacity(W).capacity_N.sum())
    assert abs(total / capacity_null(d, m) - 1) < 0.02


def test_chunked_equals_dense_and_frame_operator():
    """Pins: chunk-boundary bugs in the O(N d²) path (chunk 7 does not divide N = 100)."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn(100, 20, generator=g, dtype=F64) * torch.rand(100, 1, generator=g, dtype=F64)
    cap = feature_capacity(W, chunk_size=7)
    torch.testing.assert_close(cap.capacity_N, dense_capacity(W), rtol=1e-12, atol=0)
    torch.testing.assert_close(frame_operator(W, chunk_size=7), W.T @ W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cap.interference_N, ((W @ W.T) ** 2).sum(1), rtol=1e-12, atol=0)


def test_zero_row_and_float32_agreement():
    """Pins: NaN from 0/0 on a dead (zero) latent; precision loss without fp64 accumulation."""
    g = torch.Generator().manual_seed(6)
    W = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=1)
    W[7] = 0
    c32 = feature_capacity(W).capacity_N
    c64 = feature_capacity(W.double()).capacity_N
    assert not torch.isnan(c32).any() and float(c32[7]) == 0.0
    torch.testing.assert_close(c32, c64, rtol=1e-5, atol=1e-12)


def test_usage_weighting_is_row_scaling():
    """Pins: usage weights enter as √E[a²] (two parallel latents with E[a²] 1 and 4 → 0.2, 0.8)."""
    W = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F64)
    usage = torch.tensor([1.0, 4.0, 0.0], dtype=F64)
    cap = feature_capacity(W, usage, chunk_size=2)
    torch.testing.assert_close(cap.capacity_N, torch.tensor([0.2, 0.8, 0.0], dtype=F64))


def test_classification_counts():
    """Pins: thresholds ε = 0.05 and τ_norm = 0.1, and dead latents counted as ignored."""
    W = torch.cat([block_example(), torch.tensor([[0.0, 0.0, 0.0, 0.01]], dtype=F64)])
    cls = classify_features(feature_capacity(W))
    assert cls.ignored_N.tolist() == [False] * 6 + [True]
    assert cls.monosemantic_N.nonzero().flatten().tolist() == [5]
    assert int(cls.polysemantic_N.sum()) == 5
    dead = torch.zeros(7, dtype=torch.bool)
    dead[5] = True
    assert int(classify_features(feature_capacity(W), dead).monosemantic_N.sum()) == 0


def test_neuron_polysemanticity():
    """Pins: NP = effective number of latents per coordinate (1 for one latent, k for k equal)."""
    W = torch.zeros(5, 3, dtype=F64)
    W[0, 0] = 1.0  # coordinate 0: one latent
    W[1:5, 1] = 0.5  # coordinate 1: four equal latents; coordinate 2: none
    torch.testing.assert_close(
        neuron_polysemanticity(W, chunk_size=2), torch.tensor([1, 4, 0.0], dtype=F64)
    )
    usage = torch.tensor([1.0, 4.0, 0.0, 0.0, 0.0], dtype=F64)  # only latent 1 is used on coord 1
    assert neuron_polysemanticity(W, usage).tolist() == [1.0, 1.0, 0.0]


def test_summary_is_json_ready():
    """Pins: non-serialisable values (tensors, numpy ints) leaking into the report."""
    W = torch.cat([block_example(), torch.zeros(1, 4, dtype=F64)]).float()
    usage = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    out = json.loads(json.dumps(capacity_summary(W, usage, block_tau=1e-6)))
    geo = out["geometric"]
    assert geo["rank"] == 4 and abs(geo["saturation"] - 1) < 1e-6
    assert geo["n_ignored"] == 1 and geo["blocks"]["count"] == 3
    assert out["usage_weighted"]["null_sum_capacity"] == pytest.approx(capacity_null(4, 6))


def test_tiled_components_match_dense():
    """Pins: tile-offset and upper-triangle bugs in the block search (chunk 13 ∤ N = 60)."""
    from scipy.sparse.csgraph import connected_components

    g = torch.Generator().manual_seed(7)
    Q = random_orthogonal(12, 8)
    # Five random blocks in mutually orthogonal subspaces (dims 3, 3, 2, 2, 2), shuffled.
    dims, rows = [3, 3, 2, 2, 2], []
    start = 0
    for k in dims:
        rows.append(torch.randn(12, k, generator=g, dtype=F64) @ Q[start : start + k])
        start += k
    W = torch.cat(rows)[torch.randperm(60, generator=g)]
    bs = block_structure(W, tau=1e-6, chunk_size=13)
    cos = torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    _, dense = connected_components((cos.abs() > 1e-6).numpy(), directed=False)
    same_tiled = bs.label_N[:, None] == bs.label_N[None, :]
    same_dense = torch.from_numpy(dense[:, None] == dense[None, :])
    assert torch.equal(same_tiled, same_dense)
    assert sorted(bs.dim_B.tolist()) == [2, 2, 2, 3, 3] and bs.size_B.tolist() == [12] * 5
