"""Known answers for sae.analysis.matching (docs/methods.md#mmcs, docs/methods.md#alignment).
Rows are dictionary vectors."""

import math

import pytest
import torch

from sae.analysis.matching import (
    basis_alignment,
    compare_dictionaries,
    expected_null_mmcs,
    hungarian_mcc,
    max_cosine,
    random_null,
    subspace_capture,
)


def unit_rows(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


@pytest.fixture(scope="module")
def gt():
    return unit_rows(512, 256, seed=11)


def test_mmcs_of_itself_is_one(gt):
    """Pins: normalisation bugs (MMCS(G, G) = 1 both ways, full recovery at 0.9 and 0.99)."""
    m = compare_dictionaries(gt, gt)
    for v in (m.mmcs, m.mmcs_abs, m.reverse_mmcs, m.reverse_mmcs_abs, m.recovery_90, m.recovery_99):
        assert v == pytest.approx(1.0, abs=1e-6)


def test_permutation_and_positive_scaling_invariance(gt):
    """Pins: a metric that depends on column order or on decoder norms."""
    g = torch.Generator().manual_seed(1)
    learned = torch.cat([gt, unit_rows(100, 256, seed=2)]) + 0.02 * torch.randn(
        612, 256, generator=g
    )
    base = compare_dictionaries(gt, learned)
    perm = torch.randperm(612, generator=g)
    scale = torch.rand(612, 1, generator=g) * 10 + 0.1
    moved = compare_dictionaries(gt, learned[perm] * scale)
    for a, b in zip(base[:6], moved[:6], strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    torch.testing.assert_close(base.reverse_max_cos_M[perm], moved.reverse_max_cos_M)


def test_sign_flip_drops_signed_not_abs(gt):
    """Pins: signed and abs MMCS swapped or both computed on |cos|."""
    flipped = gt.clone()
    flipped[:256] *= -1
    m = compare_dictionaries(gt, flipped)
    assert m.mmcs_abs == pytest.approx(1.0, abs=1e-6)
    assert m.mmcs < 0.7 and m.recovery_90 == pytest.approx(0.5)


def test_recovery_thresholds():
    """Pins: recovery counting against the wrong threshold (cos 0.95 passes 0.9, fails 0.99)."""
    d = 8
    true = torch.eye(d)[:4]
    learned = true.clone()
    c = 0.95
    learned[:2] = c * true[:2] + math.sqrt(1 - c**2) * torch.eye(d)[4:6]  # cos exactly 0.95
    m = compare_dictionaries(true, learned)
    assert m.recovery_90 == 1.0 and m.recovery_99 == 0.5
    assert m.mmcs == pytest.approx((2 * c + 2) / 4, abs=1e-6)


def test_tiled_equals_dense():
    """Pins: tile-offset bugs (chunk 37 divides neither 300 nor 170) in both directions."""
    a, b = unit_rows(300, 16, 3, torch.float64), unit_rows(170, 16, 4, torch.float64) * 3
    cos = a @ torch.nn.functional.normalize(b, dim=1).T
    mc = max_cosine(a, b, chunk_size=37)
    torch.testing.assert_close(mc.a_signed_A, cos.max(1).values)
    torch.testing.assert_close(mc.a_abs_A, cos.abs().max(1).values)
    torch.testing.assert_close(mc.a_index_A, cos.argmax(1))
    torch.testing.assert_close(mc.b_signed_B, cos.max(0).values)
    torch.testing.assert_close(mc.b_abs_B, cos.abs().max(0).values)
    torch.testing.assert_close(mc.b_index_B, cos.argmax(0))


def test_float32_and_float64_agree(gt):
    """Pins: precision-dependent results (fp32 vs fp64 to 1e-5)."""
    learned = unit_rows(700, 256, 5)
    m32 = compare_dictionaries(gt, learned)
    m64 = compare_dictionaries(gt.double(), learned.double())
    for a, b in zip(m32[:4], m64[:4], strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize(("m", "signed", "absolute"), [(512, 0.189, 0.202), (1024, 0.201, 0.214)])
def test_random_null_matches_math(gt, m, signed, absolute):
    """Pins: a wrong null (e.g. normalising the wrong axis). Measured values at d 256, N 512.

    Tolerance ±0.01: the per-feature max has std ≈ 0.025 at d 256, so the mean over 512 features
    and 3 repeats has SE ≈ 0.0007; the exact expectations (0.1890/0.2015, 0.2014/0.2132) differ
    from single sampled measurements by ≤ 0.001. ±0.01 is > 10 SE yet far below any real signal.
    """
    null = random_null(gt, m, repeats=3, seed=0)
    assert null.mmcs == pytest.approx(signed, abs=0.01)
    assert null.mmcs_abs == pytest.approx(absolute, abs=0.01)
    exp_signed, exp_abs = expected_null_mmcs(256, m)
    assert exp_signed == pytest.approx(signed, abs=0.002)
    assert exp_abs == pytest.approx(absolute, abs=0.002)


def test_random_null_is_seeded(gt):
    """Pins: an unseeded null that changes from run to run."""
    assert random_null(gt, 64, repeats=2, seed=7) == random_null(gt, 64, repeats=2, seed=7)


def test_hungarian_recovers_permutation():
    """Pins: MCC on a noisy permuted copy, exact dense path vs sparse candidate path."""
    g = torch.Generator().manual_seed(6)
    true = unit_rows(200, 64, 7)
    perm = torch.randperm(200, generator=g)
    learned = torch.cat(
        [true[perm] + 0.05 * torch.randn(200, 64, generator=g), unit_rows(50, 64, 8)]
    )
    dense = hungarian_mcc(true, learned)
    sparse = hungarian_mcc(true, learned, max_dense=0, candidates=4, chunk_size=64)
    assert dense.exact and not sparse.exact
    inv = torch.argsort(perm)
    assert torch.equal(dense.learned_idx[torch.argsort(dense.true_idx)], inv)
    assert sparse.mcc == pytest.approx(dense.mcc, abs=1e-9)
    expected = float(torch.nn.functional.cosine_similarity(true, learned[inv]).mean())
    assert dense.mcc == pytest.approx(expected, abs=1e-5)


def test_hungarian_with_fewer_learned_counts_unmatched_as_zero():
    """Pins: averaging over matched pairs only, which would hide missing features."""
    true = torch.eye(6)
    m = hungarian_mcc(true, true[:3])
    assert m.mcc == pytest.approx(0.5) and len(m.true_idx) == 3
    s = hungarian_mcc(true, true[:3], max_dense=0, candidates=2)
    assert s.mcc == pytest.approx(0.5)


def test_basis_alignment_weights_and_null():
    """Pins: usage weights w_k = E[a_k²]‖d_k‖² and the random null ≈ 0.20 at d 256, K 512."""
    basis = torch.eye(4)
    dec = torch.tensor([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0]]) * torch.tensor([[2.0], [1.0]])
    al = basis_alignment(dec, basis, mean_sq_act_M=torch.tensor([1.0, 4.0]))
    # w = (1·4, 4·1) → weighted = (4·1 + 4·0.8)/8 = 0.9; unweighted (1 + 0.8)/2.
    assert al.weighted_mmcs == pytest.approx(0.9) and al.mmcs == pytest.approx(0.9)
    al = basis_alignment(dec, basis, mean_sq_act_M=torch.tensor([1.0, 0.0]))
    assert al.weighted_mmcs == pytest.approx(1.0)
    rand = basis_alignment(unit_rows(2000, 256, 9), unit_rows(512, 256, 10))
    assert rand.null == pytest.approx(0.2015, abs=1e-3)
    assert rand.mmcs == pytest.approx(rand.null, abs=0.01)


def test_subspace_capture_known_cases():
    """Pins: φ_r = 1 for features inside S_r, ≈ r/d for random features, and the QR order."""
    d = 64
    basis = unit_rows(10, d, 12, torch.float64)
    inside = torch.randn(30, 3, dtype=torch.float64) @ basis[:3]
    cap = subspace_capture(inside, basis)
    assert cap.phi_R[2] == pytest.approx(1.0, abs=1e-12) and cap.phi_R[1] < 1
    rand = subspace_capture(unit_rows(4000, d, 13), basis)
    torch.testing.assert_close(rand.phi_R, rand.baseline_R, atol=0.01, rtol=0)
