"""Jacobians and edges between two adjacent node layers of the interaction graph (Bushnaq et al.
2024, arXiv 2405.10928 §2; docs/methods.md#interaction-basis).

A **section** maps folded node layer l to folded node layer l+1 (`f̃_BTF -> g̃_BTG`, constant
coordinate first on both sides; T = positions, 1 for a plain MLP). Folding the biases makes a
ReLU or linear section positively homogeneous, `g̃(α f̃) = α g̃(f̃)`, so its integrated gradient
is the plain gradient and attribution is complete (Σ_j A_ij = ĝ_i). Sections:

* `mlp_section(W1, b1, W2, b2, act)`: `g = W2 act(W1 f + c b1) + c b2` (rib's bias folding);
  homogeneous for ReLU, a GELU one needs quadrature.
* `perspective(fn)`: any module `fn(f)` (a transformer block) as `c·fn(f/c)`, the homogeneous
  extension [inferred: it equals rib's folding for affine and ReLU layers], so its straight-line
  integrated gradient is exactly the gradient at α = 1 and ∂/∂c = fn(f) − J f.

Jacobians are taken with `torch.func.vjp`, batched over cotangents with `vmap` in chunks
(`chunk` cotangents at a time bounds memory); `mlp_jacobian` is the analytic form for MLPs.

    Mp_FF, n = jacobian_second_moment(section, f_BTF, out.C_FK, sources=64)
    rows = ig_rows(section, f_BTF, out.C_FK, t_idx=torch.arange(T), rule="gauss_legendre")
    E = edge_sums(rows, f_BTF, basis, t_idx).E_KoKi
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.func import vjp, vmap

from sae.analysis.interaction_basis import (
    Moments,
    NodeBasis,
    lib_basis,
    neuron_basis,
    pca_basis,
)

Section = Callable[[Tensor], Tensor]
Rule = Literal["gradient", "gauss_legendre"]
Target = Literal["next_layer", "output"]

__all__ = [
    "Section",
    "mlp_section",
    "perspective",
    "mlp_jacobian",
    "quadrature",
    "jacobian_second_moment",
    "ig_rows",
    "EdgeSums",
    "edge_sums",
    "sae_edge_sums",
    "outside_part",
    "Target",
    "chain_bases",
]

_ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "identity": lambda z: z,
}


def mlp_section(
    W1_HD: Tensor, b1_H: Tensor | None, W2_DH: Tensor, b2_D: Tensor | None, act: str = "relu"
) -> Section:
    """Folded `g = W2 act(W1 f + c b1) + c b2` on [..., 1 + d_in] -> [..., 1 + d_out]."""
    f_act = _ACTS[act]

    def section(f_BTF: Tensor) -> Tensor:
        c, f = f_BTF[..., :1], f_BTF[..., 1:]
        z = f @ W1_HD.T.to(f)
        if b1_H is not None:
            z = z + c * b1_H.to(f)
        g = f_act(z) @ W2_DH.T.to(f)
        if b2_D is not None:
            g = g + c * b2_D.to(f)
        return torch.cat([c, g], -1)

    return section


def perspective(fn: Callable[[Tensor], Tensor]) -> Section:
    """The homogeneous extension `[c, c·fn(f/c)]` of a map on unfolded [B, T, d] activations
    (per position; a map to fewer positions is scaled by the mean constant, still homogeneous)."""

    def section(f_BTF: Tensor) -> Tensor:
        c = f_BTF[..., :1]
        g = fn(f_BTF[..., 1:] / c)
        if g.shape[-2] != c.shape[-2]:  # fewer output positions: scale by the mean constant
            c = c.mean(-2, keepdim=True).expand(*g.shape[:-1], 1)
        return torch.cat([c, c * g], -1)

    return section


def mlp_jacobian(
    W1_HD: Tensor, b1_H: Tensor | None, W2_DH: Tensor, b2_D: Tensor | None, f_NF: Tensor
) -> Tensor:
    """Analytic folded Jacobian ∂g̃/∂f̃ [N, 1 + d_out, 1 + d_in] of a ReLU `mlp_section`:
    W2 diag(1[z > 0]) [b1 | W1], plus b2 on the constant input and 1 on constant -> constant."""
    f = f_NF.to(torch.float64)
    W1, W2 = W1_HD.to(f), W2_DH.to(f)
    b1 = torch.zeros(W1.shape[0], dtype=f.dtype) if b1_H is None else b1_H.to(f)
    b2 = torch.zeros(W2.shape[0], dtype=f.dtype) if b2_D is None else b2_D.to(f)
    z = f[:, 1:] @ W1.T + f[:, :1] * b1
    W1f = torch.cat([b1[:, None], W1], 1)  # [H, F]
    J = torch.einsum("oh,nh,hf->nof", W2, (z > 0).to(f), W1f)
    J[:, :, 0] += b2
    top = torch.zeros(len(f), 1, J.shape[2], dtype=f.dtype)
    top[:, 0, 0] = 1.0
    return torch.cat([top, J], 1)


def quadrature(rule: Rule, points: int) -> tuple[Tensor, Tensor]:
    """(α_q, w_q) on [0, 1]: the single point α = 1 (exact for homogeneous sections) or
    Gauss–Legendre with `points` nodes."""
    if rule == "gradient":
        return torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    if rule != "gauss_legendre" or points < 1:
        raise ValueError(f"rule={rule!r}, points={points}: use 'gradient' or 'gauss_legendre' ≥ 1")
    x, w = np.polynomial.legendre.leggauss(points)
    return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)


def _vjp_rows(section: Section, f_BTF: Tensor, ct_CBTG: Tensor, chunk: int) -> Tensor:
    """∂⟨ct_c, g̃⟩/∂f̃ for each cotangent c: [C, B, T, F] (one forward, vmapped backwards)."""
    _, pull = vjp(section, f_BTF)
    outs = [vmap(pull)(ct_CBTG[s : s + chunk])[0].detach() for s in range(0, len(ct_CBTG), chunk)]
    return torch.cat(outs) if outs else f_BTF.new_zeros(0, *f_BTF.shape)


def _out_shape(section: Section, f_BTF: Tensor) -> torch.Size:
    with torch.no_grad():
        return section(f_BTF).shape


def jacobian_second_moment(
    section: Section,
    f_BTF: Tensor,
    out_C_GK: Tensor,
    keep_BT: Tensor | None = None,
    sources: int | None = None,
    chunk: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """(Σ M′ contributions in float64 [F, F], number of (sample, input position) pairs): M′ =
    E_{x,s}[Σ_{t,i} (∂ĝ_{t,i}/∂f̃_s)ᵀ(∂ĝ_{t,i}/∂f̃_s)] with ĝ = out_Cᵀ g̃ (the next layer's
    coordinates). Exact over every kept (t, i) with `sources=None`; otherwise `sources` Rademacher
    ±1 sources over (t, i), unbiased because E[φφᵀ] = I (rib's stochastic sources). `keep_BT`
    masks input positions s, and output positions t too when the section keeps the positions
    (a section may return fewer, e.g. only the last position)."""
    B, T, F = f_BTF.shape
    _, T_out, G = _out_shape(section, f_BTF)
    keep = torch.ones(B, T, dtype=torch.bool) if keep_BT is None else keep_BT.bool().cpu()
    keep_f = keep.to(f_BTF.device, f_BTF.dtype)
    keep_o = keep_f if T_out == T else torch.ones(B, T_out).to(f_BTF)
    C = out_C_GK.to(f_BTF)
    K = C.shape[1]
    acc = torch.zeros(F, F, dtype=torch.float64)

    def add(ct: Tensor, scale: float) -> None:
        g = _vjp_rows(section, f_BTF, ct, chunk) * keep_f[None, :, :, None]
        g2 = g.reshape(-1, F).to(torch.float64).cpu()
        acc.add_(g2.T @ g2, alpha=scale)

    if sources is None:
        for t in range(T_out):
            for i0 in range(0, K, chunk):
                ks = torch.arange(i0, min(i0 + chunk, K))
                ct = torch.zeros(len(ks), B, T_out, G, dtype=f_BTF.dtype, device=f_BTF.device)
                ct[:, :, t, :] = C[:, ks].T[:, None, :] * keep_o[None, :, t, None]
                add(ct, 1.0)
    else:
        for s0 in range(0, sources, chunk):
            r = min(chunk, sources - s0)
            phi = torch.randint(0, 2, (r, B, T_out, K), generator=generator).to(f_BTF) * 2 - 1
            add((phi @ C.T) * keep_o[None, :, :, None], 1.0 / sources)
    return acc, int(keep.sum())


def ig_rows(
    section: Section,
    f_BTF: Tensor,
    out_C_GK: Tensor,
    t_idx: Tensor,
    rule: Rule = "gradient",
    points: int = 20,
    chunk: int = 64,
) -> Tensor:
    """Integrated gradients ∫₀¹ ∂ĝ_{t,i}(α f̃)/∂f̃_s dα for the output positions `t_idx` and every
    output node i: [n_t, K_out, B, T, F] (float64), every sample of the batch at once."""
    B, T, F = f_BTF.shape
    _, T_out, G = _out_shape(section, f_BTF)
    C = out_C_GK.to(f_BTF)
    K = C.shape[1]
    alpha_Q, w_Q = quadrature(rule, points)
    ct = torch.zeros(len(t_idx), K, B, T_out, G, dtype=f_BTF.dtype, device=f_BTF.device)
    for n, t in enumerate(t_idx.tolist()):
        ct[n, :, :, t, :] = C.T[:, None, :]
    ct = ct.reshape(-1, B, T_out, G)
    rows = torch.zeros(len(ct), B, T, F, dtype=torch.float64)
    for a, w in zip(alpha_Q.tolist(), w_Q.tolist(), strict=True):
        rows += w * _vjp_rows(section, f_BTF * a, ct, chunk).to(torch.float64).cpu()
    return rows.reshape(len(t_idx), K, B, T, F)


class EdgeSums(NamedTuple):
    E_KoKi: Tensor
    """Σ over scored (sample, output position) of A_ij², float64; divide by `n` for E_ij."""
    n: int
    """(sample, output position) pairs scored."""
    A_tKoBKi: Tensor
    """this call's attributions A[t, i, b, j] = Σ_s Ĵ_{t,i;s,·}·c⁺_j f̂_{s,j} over the kept input
    positions s (completeness checks)."""


def _kept(keep_BT: Tensor | None, B: int, T: int) -> Tensor:
    """[B, T, 1] float64 mask of the input positions whose activations carry edges (None: all)."""
    keep = torch.ones(B, T, dtype=torch.bool) if keep_BT is None else keep_BT.bool().cpu()
    return keep[..., None].to(torch.float64)


def _kept_input(f_BTF: Tensor, keep_BT: Tensor | None) -> Tensor:
    """f̃ with the activations of the left-out positions zeroed; the constant coordinate stays
    at every position (under `perspective` the constants' attributions cancel across positions,
    Σ_s ∂g̃/∂c_s = g̃ − Σ_s J_s f_s, so dropping a position's constant would move its share to
    the others' constants)."""
    f = f_BTF.to(torch.float64).cpu()
    return torch.cat([f[..., :1], f[..., 1:] * _kept(keep_BT, *f.shape[:2])], -1)


def outside_part(rows: Tensor, f_BTF: Tensor, keep_BT: Tensor | None) -> Tensor:
    """Σ_s Ĵ_{t,i;s}·[0, f_s] over the input positions that `keep_BT` leaves out (BOS, special
    tokens) [n_t, K_out, B]. Edges carry the kept positions' activations only, the rows the
    bases and M′ are fitted on, so Σ_j A_ij + this = ĝ_i for a complete basis and a
    homogeneous section."""
    f = f_BTF.to(torch.float64).cpu()
    return torch.einsum("tobsf,bsf->tob", rows, f - _kept_input(f, keep_BT))


def _scored(t_idx: Tensor, keep_BT: Tensor | None, B: int) -> Tensor:
    """[n_t, B] float mask of the output positions that count."""
    if keep_BT is None:
        return torch.ones(len(t_idx), B, dtype=torch.float64)
    return keep_BT.bool().cpu()[:, t_idx].T.to(torch.float64)


def edge_sums(
    rows: Tensor, f_BTF: Tensor, basis: NodeBasis, t_idx: Tensor, keep_BT: Tensor | None = None
) -> EdgeSums:
    """Squared-attribution edge sums E_ij = Σ_{x,t}(Σ_s Ĵ_{t,i;s}·c⁺_j f̂_{s,j})² (rib's `squared`
    edges) for an upstream basis, from `ig_rows`. Input positions s and output positions t are
    the kept ones (`keep_BT`), the rows the basis was fitted on; the left-out input positions'
    share of ĝ is `outside_part`."""
    f = f_BTF.to(torch.float64).cpu()
    fhat = _kept_input(f, keep_BT) @ basis.C_FK  # [B, T, Ki]
    proj = rows @ basis.Cplus_KF.T  # [n_t, Ko, B, T, Ki]
    A = torch.einsum("tobsk,bsk->tobk", proj, fhat)
    m = _scored(t_idx, keep_BT, f.shape[0])  # [n_t, B]
    E = torch.einsum("tobk,tb->ok", A.pow(2), m)
    return EdgeSums(E, int(m.sum()), A)


def sae_edge_sums(
    rows: Tensor,
    acts_BTM: Tensor,
    W_dec_MD: Tensor,
    err_BTD: Tensor,
    b_dec_D: Tensor,
    t_idx: Tensor,
    keep_BT: Tensor | None = None,
    chunk: int = 256,
) -> EdgeSums:
    """Edges from SAE nodes: latents (write d_k, coordinate a_k; computed on each position's
    active set only), an error node (write ε_s = f_s − x̂_s, coordinate 1) and a bias node
    (write [1, b_dec], coordinate 1), so Σ_j A_ij = Σ_s Ĵ f̃_s stays complete. Columns:
    [latents..., error, bias]. Positions: the kept ones, as in `edge_sums` (at a left-out
    position the bias node writes only the constant)."""
    n_t, Ko, B, T, F = rows.shape
    M = W_dec_MD.shape[0]
    keep = _kept(keep_BT, B, T)
    b, s, k = (acts_BTM.cpu() * keep.to(acts_BTM.dtype)).nonzero(as_tuple=True)
    a = acts_BTM.cpu()[b, s, k].to(torch.float64)
    W = W_dec_MD.to(torch.float64)
    A = torch.zeros(n_t, Ko, B * (M + 2), dtype=torch.float64)
    for c in range(0, len(b), chunk):  # Ĵ_{t,i;s}·d_k over the active (b, s, k) only
        bc, sc, kc = b[c : c + chunk], s[c : c + chunk], k[c : c + chunk]
        dots = torch.einsum("topd,pd->top", rows[:, :, bc, sc, 1:], W[kc]) * a[c : c + chunk]
        A.index_add_(2, bc * (M + 2) + kc, dots)
    A = A.reshape(n_t, Ko, B, M + 2)
    err = err_BTD.to(torch.float64).cpu() * keep
    A[..., M] = torch.einsum("tobsd,bsd->tob", rows[..., 1:], err)
    bias_BTF = torch.cat([torch.ones(B, T, 1, dtype=torch.float64), keep * b_dec_D.double()], -1)
    A[..., M + 1] = torch.einsum("tobsf,bsf->tob", rows, bias_BTF)
    m = _scored(t_idx, keep_BT, B)
    E = torch.einsum("tobk,tb->ok", A.pow(2), m)
    return EdgeSums(E, int(m.sum()), A)


def chain_bases(
    sections: list[Section],
    layers: list[Tensor],
    target: Target = "next_layer",
    family: Literal["lib", "pca", "neuron"] = "lib",
    centre: bool = True,
    final: Literal["pca", "neuron"] = "pca",
    sources: int | None = None,
    batch: int = 512,
    generator: torch.Generator | None = None,
) -> list[NodeBasis]:
    """Bases of every node layer of a chain `layers[l+1] = sections[l](layers[l])` (folded
    [N, T, F] tensors, one per node layer), built from the output backwards (docs/methods.md#lib).

    The last node layer is in its PCA basis (`final="pca"`, centred as `centre`) or left in the
    neuron basis. LIB's M′ at layer l is taken towards `target`:
    * `"next_layer"` (the Local Interaction Basis): the coordinates of layer l+1's basis through
      `sections[l]`;
    * `"output"` (the original interaction basis): the last layer's basis coordinates through
      the composition `sections[-1] ∘ … ∘ sections[l]`.
    The two agree for the last hidden layer, and for every layer of a linear chain (uncentred),
    since then C^{l+1} C^{l+1 ᵀ} is layer l+1's own M′ on the data's span.
    `family="pca"|"neuron"` gives the baselines (target unused). M′ is exact unless `sources`
    stochastic sources are asked for; samples are processed `batch` at a time."""
    if target not in ("next_layer", "output"):
        raise ValueError(f"target={target!r}: use 'next_layer' or 'output'")
    if len(layers) != len(sections) + 1:
        raise ValueError(f"{len(layers)} node layers need {len(layers) - 1} sections, got "
                         f"{len(sections)}")  # fmt: skip
    last = layers[-1]
    if final == "pca":
        bases = [pca_basis(Moments(last.shape[-1]).add(last), centre=centre)]
    else:
        bases = [neuron_basis(last.shape[-1], Moments(last.shape[-1]).add(last).gram)]
    for li in range(len(sections) - 1, -1, -1):
        f = layers[li]
        mom = Moments(f.shape[-1]).add(f)
        if family == "pca":
            bases.insert(0, pca_basis(mom, centre=centre))
            continue
        if family == "neuron":
            bases.insert(0, neuron_basis(f.shape[-1], mom.gram))
            continue
        if target == "next_layer":
            sec, C = sections[li], bases[0].C_FK
        else:
            sec, C = _compose(sections[li:]), bases[-1].C_FK
        Mp = torch.zeros(f.shape[-1], f.shape[-1], dtype=torch.float64)
        n = 0
        for s in range(0, len(f), batch):
            m, k = jacobian_second_moment(sec, f[s : s + batch], C.to(f), sources=sources,
                                          generator=generator)  # fmt: skip
            Mp, n = Mp + m, n + k
        bases.insert(0, lib_basis(mom, Mp / n, centre=centre))
    return bases


def _compose(sections: list[Section]) -> Section:
    def section(f: Tensor) -> Tensor:
        for s in sections:
            f = s(f)
        return f

    return section
