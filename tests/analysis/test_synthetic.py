"""Generator statistics (docs/methods.md#synthetic-generator) and stream determinism for
sae.analysis.synthetic."""

import math

import pytest
import torch

from sae.analysis.synthetic import (
    SyntheticConfig,
    SyntheticData,
    feature_probs,
)

BATCH = 4096


def codes(cfg: SyntheticConfig, n_samples: int) -> torch.Tensor:
    data = SyntheticData(cfg)
    n_batches = -(-n_samples // BATCH)
    return torch.cat([data.sample(j, BATCH).codes_BN for j in range(n_batches)])[:n_samples]


def log_slope(active_SN: torch.Tensor, x_N: torch.Tensor) -> float:
    """Slope of log(frequency) on x, weighted by counts (Poisson variance of log count ≈ 1/count)."""
    w = active_SN.sum(0).double()
    keep = w > 0
    x, w = x_N.double()[keep], w[keep]
    y = torch.log(w / active_SN.shape[0])
    xb, yb = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    return float((w * (x - xb) * (y - yb)).sum() / (w * (x - xb) ** 2).sum())


@pytest.fixture(scope="module")
def default_codes():
    return codes(SyntheticConfig(), 100_000)


def test_mean_active_count_default(default_codes):
    """Pins: missing rescale to mean_active (5 ± 0.1 over 1e5 samples; SE ≈ 0.007)."""
    assert float((default_codes > 0).sum(1).float().mean()) == pytest.approx(5.0, abs=0.1)


def test_frequency_slope(default_codes):
    """Pins: wrong decay direction or base (log-frequency slope ln 0.99 ± 5%)."""
    slope = log_slope(default_codes > 0, torch.arange(512))
    assert slope == pytest.approx(math.log(0.99), rel=0.05)
    p = feature_probs(SyntheticConfig())
    assert float(p.sum()) == pytest.approx(5.0) and float(p[1] / p[0]) == pytest.approx(0.99)


def test_reference_quirk_independent_count():
    """Pins: the replication's unrescaled independent mode, (5/512)(1 − 0.99^512)/0.01 ≈ 0.97."""
    cfg = SyntheticConfig(reference_quirks=True)
    expected = (5 / 512) * (1 - 0.99**512) / 0.01
    assert float(feature_probs(cfg).sum()) == pytest.approx(expected, rel=1e-9)
    count = float((codes(cfg, 40_000) > 0).sum(1).float().mean())
    assert count == pytest.approx(0.97, abs=0.02)  # SE ≈ 0.005


def test_batches_depend_only_on_seed_and_index():
    """Pins: a stream that changes on resume (batch j must not depend on what came before)."""
    data = SyntheticData(
        SyntheticConfig(variant="correlated", d_in=32, n_features=64, mean_active=3)
    )
    full = list(data.batches(256, start=0, stop=5))
    resumed = list(SyntheticData(data.cfg).batches(256, start=3, stop=5))
    assert torch.equal(full[3], resumed[0]) and torch.equal(full[4], resumed[1])
    assert full[0].dtype == torch.float32 and full[0].shape == (256, 32)
    assert not torch.equal(full[0], full[1])
    other = SyntheticData(SyntheticConfig(d_in=32, n_features=64, mean_active=3, seed=1))
    assert not torch.equal(other.dictionary_ND, data.dictionary_ND)


def test_dictionary_and_reconstruction():
    """Pins: non-unit true features, or x ≠ codes @ G in the noiseless case."""
    data = SyntheticData(SyntheticConfig(d_in=64, n_features=128))
    torch.testing.assert_close(data.dictionary_ND.norm(dim=1), torch.ones(128))
    b = data.sample(0, 512)
    torch.testing.assert_close(b.x_BD, b.codes_BN @ data.dictionary_ND)
    assert float(b.codes_BN.min()) >= 0 and float(b.codes_BN.max()) <= 1


def test_noise_is_isotropic_with_requested_std():
    """Pins: noise added to codes instead of activations, or with the wrong scale."""
    data = SyntheticData(SyntheticConfig(d_in=64, n_features=128, noise_std=0.3))
    b = data.sample(2, 4096)
    resid = b.x_BD - b.codes_BN @ data.dictionary_ND
    assert float(resid.std()) == pytest.approx(0.3, rel=0.02)
    assert float(resid.mean()) == pytest.approx(0.0, abs=0.01)


def co_activation_excess(data: SyntheticData) -> float:
    """Mean over feature pairs of P(i, j both active) / (p_i p_j) − 1; 0 under independence."""
    act = torch.cat([data.sample(j, 4096).codes_BN > 0 for j in range(4)]).float()
    p = act.mean(0)
    excess = (act.T @ act) / act.shape[0] / (p[:, None] * p[None, :]) - 1
    return float(excess[~torch.eye(len(p), dtype=torch.bool)].mean())


def test_correlated_per_sample_vs_per_batch():
    """Pins: the copula drawn once per batch by default (the reference quirk) or not at all.

    Per batch (quirk), every sample of a batch shares its probabilities, so a feature's frequency
    swings between batches far beyond the binomial scale; per sample (default) it does not, yet
    features co-activate more often than independence predicts (measured excess ≈ 0.047 vs
    |excess| < 0.002 for the independent variant, seeds 0–2)."""
    small = dict(d_in=32, n_features=128, mean_active=5)
    ratios = {}
    for quirk in (False, True):
        data = SyntheticData(SyntheticConfig(**small, variant="correlated", reference_quirks=quirk))
        freq_KN = torch.stack(
            [(data.sample(j, 512).codes_BN > 0).float().mean(0) for j in range(30)]
        )
        p = freq_KN.mean(0)[:16]
        ratios[quirk] = float((freq_KN[:, :16].std(0) / (p * (1 - p) / 512).sqrt()).mean())
        assert float(freq_KN.sum(1).mean()) == pytest.approx(5.0, abs=0.25)
    assert ratios[False] < 1.4 and ratios[True] > 2.5
    corr = co_activation_excess(SyntheticData(SyntheticConfig(**small, variant="correlated")))
    indep = co_activation_excess(SyntheticData(SyntheticConfig(**small)))
    assert corr > 0.025 and abs(indep) < 0.01


def test_correlated_mean_count_default():
    """Pins: the per-sample copula's scale 2·p_i (E[Φ(z)] = 1/2), mean count 5 ± 0.1."""
    count = float((codes(SyntheticConfig(variant="correlated"), 20_000) > 0).sum(1).float().mean())
    assert count == pytest.approx(5.0, abs=0.1)


def test_exclusive_groups():
    """Pins: co-activation inside a group, and marginals that drift from p_i."""
    cfg = SyntheticConfig(d_in=32, n_features=130, mean_active=4, variant="exclusive", group_size=4)
    act = codes(cfg, 40_000) > 0
    pad = torch.cat([act, torch.zeros(act.shape[0], 2, dtype=torch.bool)], 1)
    assert int(pad.view(act.shape[0], -1, 4).sum(2).max()) <= 1
    assert float(act.sum(1).float().mean()) == pytest.approx(4.0, abs=0.05)
    torch.testing.assert_close(act.float().mean(0).double(), feature_probs(cfg), atol=0.006, rtol=0)


def test_power_law_frequencies():
    """Pins: the power-law option (log-log slope −a)."""
    cfg = SyntheticConfig(
        d_in=32, n_features=256, mean_active=3, frequency="power_law", power_law_exponent=1.2
    )
    act = codes(cfg, 30_000) > 0
    assert log_slope(act, torch.log(torch.arange(256) + 1.0)) == pytest.approx(-1.2, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_in": 0}, "d_in"),
        ({"mean_active": 600}, "mean_active"),
        ({"variant": "sparse"}, "variant"),
        ({"prob_decay": 1.5}, "prob_decay"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"n_features": 8, "mean_active": 6, "prob_decay": 0.5}, "mean_active"),
        ({"variant": "exclusive", "group_size": 64, "mean_active": 40}, "group_size"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    """Pins: bad configs failing late or with a message that does not name the field."""
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field} is"):
        SyntheticConfig(**kwargs)
