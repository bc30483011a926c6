"""Node-layer bases of the interaction graph: neuron, PCA and the Local Interaction Basis (LIB;
Bushnaq et al. 2024, arXiv 2405.10928), and the degeneracy measures they remove (arXiv 2405.10927).
Definitions: docs/methods.md#interaction-basis.

Every node layer is used with its bias folded in: a constant coordinate 1 is put **first**, so
`f̃ = [1, f]` (width F = d + 1) and affine sections become linear (`sae.analysis.interaction_jacobian`).
A basis is a pair of maps in folded coordinates: read directions `C [F, K]` give the coordinates
`f̂ = Cᵀ f̃`, write directions `C⁺ [K, F]` give back `f̃ ≈ C⁺ᵀ f̂`. Node 0 is the constant
direction wherever the basis keeps one (centred bases always do).

    from sae.analysis.interaction_basis import Moments, lib_basis, pca_basis
    mom = Moments(d + 1); mom.add(fold(f_ND))
    out = pca_basis(mom, centre=True)
    lib = lib_basis(mom, Mprime_FF, centre=True)      # M′ from interaction_jacobian

All eigendecompositions run in float64 with a relative threshold `λ ≤ eps_rel·λ₁` (rib uses an
absolute one; a relative one does not depend on the scale of the activations).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

EPS_REL = 1e-12
"""eigenvalues at or below EPS_REL × the largest are numerically zero (float64)."""

__all__ = [
    "EPS_REL",
    "Moments",
    "NodeBasis",
    "Whitening",
    "fold",
    "eig_desc",
    "neuron_basis",
    "pca_basis",
    "whitening",
    "lib_from_whitening",
    "lib_basis",
    "Degeneracy",
    "degeneracy",
    "firing_redundancy",
]


def fold(f_NDorBTD: Tensor) -> Tensor:
    """Put the constant coordinate 1 first on the last axis (the folded bias)."""
    ones = torch.ones(*f_NDorBTD.shape[:-1], 1, dtype=f_NDorBTD.dtype, device=f_NDorBTD.device)
    return torch.cat([ones, f_NDorBTD], -1)


class Moments:
    """Streaming float64 first and second moments E[f̃], E[f̃ f̃ᵀ] of folded rows."""

    def __init__(self, width: int):
        self.n = 0
        self.sum_F = torch.zeros(width, dtype=torch.float64)
        self.sq_FF = torch.zeros(width, width, dtype=torch.float64)

    def add(self, f_NF: Tensor) -> Moments:
        f = f_NF.reshape(-1, f_NF.shape[-1]).to(torch.float64).cpu()
        self.n += len(f)
        self.sum_F += f.sum(0)
        self.sq_FF += f.T @ f
        return self

    @property
    def mean(self) -> Tensor:
        return self.sum_F / max(self.n, 1)

    @property
    def gram(self) -> Tensor:
        """E[f̃ f̃ᵀ] (uncentred; entry [0, 0] is 1 for folded rows)."""
        return self.sq_FF / max(self.n, 1)

    @property
    def cov(self) -> Tensor:
        """E[(f − μ)(f − μ)ᵀ] over the non-constant coordinates (population normalisation)."""
        mu = self.mean[1:]
        return self.gram[1:, 1:] - torch.outer(mu, mu)


def eig_desc(S_FF: Tensor, eps_rel: float = EPS_REL) -> tuple[Tensor, Tensor]:
    """(eigenvalues [r], eigenvectors [F, r]) of a symmetric PSD matrix in float64, descending,
    keeping λ > eps_rel·λ₁ (λ₁ ≤ 0 keeps nothing)."""
    S = S_FF.to(torch.float64)
    vals, vecs = torch.linalg.eigh((S + S.T) / 2)
    vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
    if len(vals) == 0 or vals[0] <= 0:
        return vals[:0], vecs[:, :0]
    keep = vals > eps_rel * vals[0]
    return vals[keep], vecs[:, keep]


class NodeBasis(NamedTuple):
    kind: Literal["neuron", "pca", "lib"]
    C_FK: Tensor
    """read directions (columns): coordinates f̂ = Cᵀ f̃."""
    Cplus_KF: Tensor
    """write directions (rows): f̃ ≈ C⁺ᵀ f̂."""
    Lambda_K: Tensor
    """importance per node: E[f̂²] (LIB: the M eigenvalues; PCA: variance; neuron: E[f²])."""
    const_first: bool
    """node 0 is the constant direction (excluded from sparsity and clustering statistics)."""

    @property
    def k(self) -> int:
        return self.C_FK.shape[1]

    def coords(self, f_NF: Tensor) -> Tensor:
        return f_NF @ self.C_FK.to(f_NF)


def neuron_basis(width: int, gram_FF: Tensor | None = None) -> NodeBasis:
    """C = C⁺ = I: the folded coordinates themselves (node 0 = the constant 1)."""
    eye = torch.eye(width, dtype=torch.float64)
    lam = gram_FF.diagonal().to(torch.float64) if gram_FF is not None else torch.ones(width)
    return NodeBasis("neuron", eye, eye, lam.to(torch.float64), True)


def _centring(mean_F: Tensor) -> tuple[Tensor, Tensor]:
    """T with T f̃ = [1, f − μ] and its inverse T⁻¹ (f̃ = T⁻¹ y)."""
    F = len(mean_F)
    T = torch.eye(F, dtype=torch.float64)
    T[1:, 0] = -mean_F[1:]
    Tinv = torch.eye(F, dtype=torch.float64)
    Tinv[1:, 0] = mean_F[1:]
    return T, Tinv


class Whitening(NamedTuple):
    R_FR: Tensor
    """whitened coordinates w = Rᵀ f̃ have identity second moment."""
    Rplus_RF: Tensor
    """f̃ = R⁺ᵀ w on the data's span."""
    D_R: Tensor
    """kept Gram eigenvalues (centred: 1 for the constant, then the variances)."""
    rank_gram: int
    """rank of the (centred) Gram, constant direction included."""
    centred: bool


def whitening(mom: Moments, centre: bool, eps_rel: float = EPS_REL) -> Whitening:
    """Gram eigendecomposition and whitening (LIB step 1–2). Centred: the Gram of y = T f̃ is
    block-diagonal [[1, 0], [0, Σ]], so the constant direction is kept first, separately."""
    F = mom.sq_FF.shape[0]
    if not centre:
        D, U = eig_desc(mom.gram, eps_rel)
        T, Tinv = torch.eye(F, dtype=torch.float64), torch.eye(F, dtype=torch.float64)
    else:
        Dc, Uc = eig_desc(mom.cov, eps_rel)
        U = torch.zeros(F, len(Dc) + 1, dtype=torch.float64)
        U[0, 0] = 1.0
        U[1:, 1:] = Uc
        D = torch.cat([torch.ones(1, dtype=torch.float64), Dc])
        T, Tinv = _centring(mom.mean)
    R = T.T @ U * D.rsqrt()
    Rplus = (U * D.sqrt()).T @ Tinv.T
    return Whitening(R, Rplus, D, len(D), centre)


def pca_basis(mom: Moments, centre: bool, eps_rel: float = EPS_REL) -> NodeBasis:
    """Principal directions of the folded Gram (or of the centred data plus the constant
    direction first). Unscaled: C⁺ = C⁺ of an orthonormal U, Λ = eigenvalues."""
    w = whitening(mom, centre, eps_rel)
    scale = w.D_R.sqrt()
    C = w.R_FR * scale  # Tᵀ U
    Cplus = w.Rplus_RF / scale[:, None]  # Uᵀ T⁻ᵀ
    return NodeBasis("pca", C, Cplus, w.D_R.clone(), centre)


def lib_from_whitening(
    w: Whitening, Mprime_FF: Float[Tensor, "F F"], eps_rel: float = EPS_REL
) -> NodeBasis:
    """LIB steps 4–5: M = R⁺ M′ R⁺ᵀ = V Λ Vᵀ (second truncation), C = R V Λ^{1/2},
    C⁺ = Λ^{-1/2} Vᵀ R⁺. Centred: the constant whitened coordinate is kept as node 0 with
    Λ₀ = M₀₀ and the rest rotated among themselves [inferred: rib keeps it unrotated]."""
    M = w.Rplus_RF @ Mprime_FF.to(torch.float64) @ w.Rplus_RF.T
    if w.centred:
        lam_c, V_c = eig_desc(M[1:, 1:], eps_rel)
        r = M.shape[0]
        V = torch.zeros(r, len(lam_c) + 1, dtype=torch.float64)
        V[0, 0] = 1.0
        V[1:, 1:] = V_c
        lam = torch.cat([M[:1, 0].clamp_min(0), lam_c])
        if lam[0] <= 0:  # nothing downstream reads the constant: keep it with Λ₀ tiny but > 0
            lam[0] = eps_rel * max(float(lam_c[0]) if len(lam_c) else 1.0, 1e-300)
    else:
        lam, V = eig_desc(M, eps_rel)
    C = w.R_FR @ V * lam.sqrt()
    Cplus = (V / lam.sqrt()).T @ w.Rplus_RF
    return NodeBasis("lib", C, Cplus, lam, w.centred)


def lib_basis(mom: Moments, Mprime_FF: Tensor, centre: bool, eps_rel: float = EPS_REL) -> NodeBasis:
    """The Local Interaction Basis of one node layer from its moments and the Jacobian second
    moment M′ = E[Jᵀ J] towards the next layer's basis coordinates (docs/methods.md#lib)."""
    return lib_from_whitening(whitening(mom, centre, eps_rel), Mprime_FF, eps_rel)


class Degeneracy(NamedTuple):
    width: int
    """d (the unfolded width)."""
    rank_gram: int
    """numerical rank of E[f fᵀ] (unfolded, uncentred)."""
    activation_degeneracy: int
    """d − rank(G): linearly dependent activations (degeneracy 1)."""
    rank_mprime: int | None
    gradient_degeneracy: int | None
    """d − rank(M′): linearly dependent gradients passed back (degeneracy 2)."""


def degeneracy(gram_FF: Tensor, Mprime_FF: Tensor | None, eps_rel: float = EPS_REL) -> Degeneracy:
    """Degeneracies 1 and 2 of a node layer (folded matrices in, the constant coordinate left
    out: the counts are about the layer's d coordinates)."""
    d = gram_FF.shape[0] - 1
    r_g = len(eig_desc(gram_FF[1:, 1:], eps_rel)[0])
    r_m = None if Mprime_FF is None else len(eig_desc(Mprime_FF[1:, 1:], eps_rel)[0])
    return Degeneracy(d, r_g, d - r_g, r_m, None if r_m is None else d - r_m)


def firing_redundancy(fired_NH: Tensor, jaccard_min: float = 1 - 1e-3) -> dict[str, int]:
    """Degeneracy 3: hidden units that fire on the same inputs. `fired_NH` is the boolean pattern
    1[z > 0] over a fixed evaluation set. Returns h, distinct patterns, exact redundancy
    h − #distinct, and near-duplicate redundancy h − #groups where units with Jaccard ≥ jaccard_min
    are joined (connected components), never-firing units forming one group."""
    fired = fired_NH.to(torch.float32)
    h = fired.shape[1]
    distinct = len(torch.unique(fired_NH.T.to(torch.uint8), dim=0)) if h else 0
    inter = fired.T @ fired
    cnt = fired.sum(0)
    union = cnt[:, None] + cnt[None, :] - inter
    jac = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    adj = (jac >= jaccard_min).numpy()
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    groups = connected_components(csr_matrix(adj), directed=False)[0] if h else 0
    return {
        "units": h,
        "distinct_patterns": int(distinct),
        "redundancy_exact": int(h - distinct),
        "redundancy_near": int(h - groups),
        "never_fire": int((cnt == 0).sum()),
    }
