"""Synthetic ground-truth activations (Sharkey, Braun & Millidge 2022;
docs/methods.md#synthetic-generator).

x = Σ_i c_i g_i (+ noise) with N unit feature vectors g_i in R^d and sparse nonnegative codes c.
Batch j is a pure function of (seed, j, batch_size), so a resumed run sees the same stream and any
batch can be regenerated on its own.

    from sae.analysis.synthetic import SyntheticConfig, SyntheticData
    data = SyntheticData(SyntheticConfig(d_in=256, n_features=512, variant="correlated"))
    for x_BD in data.batches(batch_size=4096, start=0, stop=100): ...
    true_ND = data.dictionary_ND
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "SyntheticConfig",
    "SyntheticBatch",
    "SyntheticData",
    "feature_probs",
]

_STREAM_DICT, _STREAM_CORR, _STREAM_BATCH = 0, 1, 2  # independent RNG streams per purpose


@dataclass(frozen=True)
class SyntheticConfig:
    d_in: int = 256
    """Activation width (dimensions of each sample)."""
    n_features: int = 512
    """Number of ground-truth features (rows of the true dictionary)."""
    mean_active: float = 5.0
    """Expected number of active features per sample (features per sample)."""
    variant: Literal["independent", "correlated", "exclusive"] = "independent"
    """Code distribution: independent Bernoulli, Gaussian-copula correlated, or at most one
    active feature per group of `group_size` (mutually exclusive groups)."""
    frequency: Literal["exponential", "power_law"] = "exponential"
    """Shape of the activation probability over feature index i: prob_decay^i or (i+1)^-exponent."""
    prob_decay: float = 0.99
    """Ratio p_{i+1}/p_i for exponential frequencies (dimensionless, in (0, 1])."""
    power_law_exponent: float = 1.0
    """Exponent a in p_i ∝ (i+1)^-a for power-law frequencies (dimensionless, ≥ 0)."""
    group_size: int = 4
    """Features per mutually exclusive group, consecutive indices (variant='exclusive' only)."""
    noise_std: float = 0.0
    """Std of the additive isotropic Gaussian noise per dimension (activation units; 0 = none)."""
    reference_quirks: bool = False
    """Reproduce the reference code: no rescaling to mean_active for 'independent' (≈0.97 active
    at the defaults), and one copula draw per batch, rescaled on it, for 'correlated'."""
    seed: int = 0
    """Seed of the dictionary, the correlation matrix and every batch."""

    def __post_init__(self) -> None:
        def bad(field: str, value: object, valid: str) -> None:
            raise ValueError(f"SyntheticConfig.{field} is {value!r}; {valid}.")

        if self.d_in < 1:
            bad("d_in", self.d_in, "it must be a positive integer")
        if self.n_features < 1:
            bad("n_features", self.n_features, "it must be a positive integer")
        if not 0 < self.mean_active <= self.n_features:
            bad(
                "mean_active", self.mean_active, f"it must lie in (0, n_features={self.n_features}]"
            )
        if self.variant not in ("independent", "correlated", "exclusive"):
            bad("variant", self.variant, "valid variants are independent, correlated, exclusive")
        if self.frequency not in ("exponential", "power_law"):
            bad("frequency", self.frequency, "valid choices are exponential and power_law")
        if not 0 < self.prob_decay <= 1:
            bad("prob_decay", self.prob_decay, "it must lie in (0, 1]")
        if not self.power_law_exponent >= 0:
            bad("power_law_exponent", self.power_law_exponent, "it must be ≥ 0")
        if self.group_size < 1:
            bad("group_size", self.group_size, "it must be a positive integer")
        if not self.noise_std >= 0:
            bad("noise_std", self.noise_std, "it must be ≥ 0")
        if self.seed < 0:
            bad("seed", self.seed, "it must be a nonnegative integer")
        p_N = feature_probs(self)
        if self.variant == "correlated" and not self.reference_quirks:
            p_N = 2 * p_N  # largest possible p_i(z) = Φ(z_i)·(2 p_i) at Φ = 1
        if float(p_N.max()) > 1:
            bad(
                "mean_active",
                self.mean_active,
                "it asks for a feature probability above 1 "
                "under this frequency profile; lower it or flatten the profile",
            )
        if self.variant == "exclusive":
            pad = -self.n_features % self.group_size
            group_sum = torch.cat([p_N, p_N.new_zeros(pad)]).view(-1, self.group_size).sum(1)
            if float(group_sum.max()) > 1:
                bad(
                    "group_size",
                    self.group_size,
                    "a group's probabilities sum above 1; use "
                    "smaller groups or a lower mean_active",
                )


class SyntheticBatch(NamedTuple):
    x_BD: Tensor  # activations, float32
    codes_BN: Tensor  # true codes c (nonnegative, sparse), float32


def feature_probs(cfg: SyntheticConfig) -> Float[Tensor, " n"]:
    """Marginal activation probability of every feature, float64.

    Profile f_i = prob_decay^i (the reference) or (i+1)^-a ([inferred]: the reference has no
    power-law option; this is its simplest form), scaled so that Σ p_i = mean_active. With
    ``reference_quirks`` the independent variant uses p_i = f_i · mean_active / N instead (the
    replication's missing rescale: ≈0.97 active at d 256, N 512). For 'correlated' these are the
    expected marginals E[p_i(z)], since E[Φ(z_i)] = 1/2.
    """
    i = torch.arange(cfg.n_features, dtype=torch.float64)
    if cfg.frequency == "exponential":
        f_N = cfg.prob_decay**i
    else:
        f_N = (i + 1) ** -cfg.power_law_exponent
    if cfg.reference_quirks and cfg.variant == "independent":
        return f_N * cfg.mean_active / cfg.n_features
    return f_N * cfg.mean_active / f_N.sum()


def _generator(seed: int, stream: int, index: int = 0) -> torch.Generator:
    # SeedSequence hashes (seed, stream, index) into well-separated states, so batch j of seed s
    # never coincides with batch j' of seed s' and any batch is reachable without replaying.
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class SyntheticData:
    """Holds the true dictionary and the code distribution; serves batches by index (CPU)."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        g_ND = torch.randn(
            cfg.n_features,
            cfg.d_in,
            generator=_generator(cfg.seed, _STREAM_DICT),
            dtype=torch.float64,
        )
        self.dictionary_ND = torch.nn.functional.normalize(g_ND, dim=1).float()
        self.probs_N = feature_probs(cfg)
        self._probs32_N = self.probs_N.float()
        pad = -cfg.n_features % cfg.group_size
        groups_GS = torch.cat([self.probs_N, self.probs_N.new_zeros(pad)]).view(-1, cfg.group_size)
        self._group_cum_GS = groups_GS.cumsum(1).float()  # exclusive variant's selection table
        self._chol_NN: Tensor | None = None
        if cfg.variant == "correlated":
            # Reference Σ_corr: symmetrised U[0,1], shifted by 1.001·|λ_min| to be positive
            # definite (HoagyC/sparse_coding `generate_corr_matrix`).
            u = torch.rand(
                cfg.n_features,
                cfg.n_features,
                generator=_generator(cfg.seed, _STREAM_CORR),
                dtype=torch.float64,
            )
            corr = (u + u.T) / 2
            lam_min = float(torch.linalg.eigvalsh(corr)[0])
            if lam_min < 0:
                corr -= 1.001 * lam_min * torch.eye(cfg.n_features, dtype=torch.float64)
            self._chol_NN = torch.linalg.cholesky(corr).float()

    def _correlated_probs(self, batch_size: int, gen: torch.Generator) -> Tensor:
        """Per-sample Gaussian copula (default) or one draw per batch (reference quirk)."""
        cfg, n = self.cfg, self.cfg.n_features
        rows = 1 if cfg.reference_quirks else batch_size
        z_RN = torch.randn(rows, n, generator=gen) @ self._chol_NN.T
        p_RN = 0.5 * (1 + torch.erf(z_RN / math.sqrt(2))) * self._probs32_N  # Φ(z_i) · p_i
        if cfg.reference_quirks:
            # Reference: rescale the realised probabilities so that mean_i p_i = mean_active / N.
            p_RN = p_RN * (cfg.mean_active / n) / p_RN.mean()
        else:
            # [inferred] Constant scale from E[Φ(z_i)] = 1/2, so the copula's correlations survive
            # and E[count] = mean_active exactly: p_i(z) = 2 Φ(z_i) p_i.
            p_RN = 2 * p_RN
        return p_RN.clamp(max=1.0).expand(batch_size, n)

    def sample(self, index: int, batch_size: int) -> SyntheticBatch:
        """Batch ``index`` of the stream: activations and the true codes. Deterministic."""
        if index < 0 or batch_size < 1:
            raise ValueError(
                f"index {index} and batch_size {batch_size}: need index ≥ 0, size ≥ 1."
            )
        cfg, n = self.cfg, self.cfg.n_features
        gen = _generator(cfg.seed, _STREAM_BATCH, index)
        mag_BN = torch.rand(batch_size, n, generator=gen)  # magnitudes v ~ U[0, 1]
        if cfg.variant == "exclusive":
            # [inferred] One uniform per group selects at most one feature, with P(i) = p_i:
            # marginals and mean count match the independent variant; co-activation is impossible.
            cum_GS = self._group_cum_GS
            u_BG = torch.rand(batch_size, cum_GS.shape[0], generator=gen)
            hi_BGS = u_BG[..., None] < cum_GS
            lo_BGS = torch.cat([torch.zeros_like(hi_BGS[..., :1]), hi_BGS[..., :-1]], -1)
            active_BN = (hi_BGS & ~lo_BGS).reshape(batch_size, -1)[:, :n]
        else:
            if cfg.variant == "correlated":
                p_BN = self._correlated_probs(batch_size, gen)
            else:
                p_BN = self._probs32_N.expand(batch_size, n)
            active_BN = torch.rand(batch_size, n, generator=gen) < p_BN
        codes_BN = torch.where(active_BN, mag_BN, 0.0)
        if cfg.variant == "correlated":
            # Reference: a sample with no active feature gets one random feature set to 1.
            empty_B = ~active_BN.any(1)
            pick_B = torch.randint(n, (batch_size,), generator=gen)
            codes_BN[empty_B, pick_B[empty_B]] = 1.0
        x_BD = codes_BN @ self.dictionary_ND
        if cfg.noise_std > 0:
            x_BD = x_BD + cfg.noise_std * torch.randn(batch_size, cfg.d_in, generator=gen)
        return SyntheticBatch(x_BD, codes_BN)

    def batches(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Float[Tensor, "b d"]]:
        """Activations of batches start, start+1, … (forever if ``stop`` is None)."""
        j = start
        while stop is None or j < stop:
            yield self.sample(j, batch_size).x_BD
            j += 1
