"""Training losses for every SAE architecture, and the estimators they need.

`training_forward(sae, x, target, dead_mask, sparsity_scale)` is one training step's loss; the
trainer calls it (this module depends on `sae.sae`, never the reverse). The reconstruction term
is always the FVU: squared error summed over dimensions, mean
over the batch, divided by the target's variance about its batch mean (summed over dimensions).
It reads as "fraction of variance unexplained" and makes the loss independent of the scale of
the activations, so one learning rate serves every layer and model (as in EleutherAI/sparsify).

TopK-family steps are sparse (sae/sparse.py): the encoder and decoder gradients are formed from
the B x k selected latents only, and no dense [B, d_sae] latent tensor is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sae.sae import SAE, SparseCodes, TrainOutput
from sae.sparse import BagDecode, ColumnsPre, SelectedPre, encoder_pre

# AuxK handles the dead latents densely (small GEMMs over [B, n_dead]) while n_dead is at most
# this many times aux_k, and as gathered rows beyond (BENCHMARKS.md, 'Inside the training step').
AUX_DENSE_LIMIT = 4

# Least per-step rate of the running BatchTopK threshold estimate (SAELens's topk_threshold_lr);
# the trainer uses a faster one in short runs (sae/training/members.py, threshold_rate).
THRESHOLD_EMA = 0.01


class JumpReLUFn(torch.autograd.Function):
    """z * H(z - theta) with the pseudo-derivative of Rajamanoharan et al. 2024 (eq. 11):
    d/dz = H(z - theta); d/dtheta = -(theta / eps) * K((z - theta) / eps), K the rectangle
    kernel of width 1, so only pre-activations within eps/2 of the threshold teach it."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold).to(grad_out.dtype)
        near = ((pre - threshold).abs() < eps / 2).to(grad_out.dtype)
        grad_thr = -(threshold / eps) * near * grad_out
        return grad_pre, grad_thr.reshape(-1, pre.shape[-1]).sum(0), None


class StepFn(torch.autograd.Function):
    """H(z - theta) with d/dtheta = -(1/eps) K((z - theta)/eps) and no gradient to z
    (Rajamanoharan et al. 2024 eq. 12): the L0 penalty moves thresholds, not the encoder."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - threshold).abs() < eps / 2).to(grad_out.dtype)
        grad_thr = -(1.0 / eps) * near * grad_out
        return None, grad_thr.reshape(-1, pre.shape[-1]).sum(0), None


def total_variance(t_BO: Tensor) -> Tensor:
    """Variance of the rows about their mean, summed over dimensions (the FVU denominator)."""
    mean_BO = t_BO.mean(0).expand_as(t_BO)
    return (F.mse_loss(t_BO, mean_BO, reduction="sum") / len(t_BO)).clamp_min(1e-12)


def fvu(x_hat_BO: Tensor, t_BO: Tensor, var: Tensor) -> Tensor:
    """Squared error summed over dimensions, mean over rows, over `var`. `F.mse_loss` forms
    the error and its square in one pass each way (half the time of sub, pow, sum here)."""
    return F.mse_loss(x_hat_BO, t_BO, reduction="sum") / (len(t_BO) * var)


def bag_decode(idx_BK: Tensor, vals_BK: Tensor, W_dec_SO: Tensor) -> Tensor:
    """sum_k vals[b, k] * W_dec[idx[b, k]] for each row b, without a dense [B, d_sae]."""
    return F.embedding_bag(
        idx_BK, W_dec_SO, mode="sum", per_sample_weights=vals_BK.to(W_dec_SO.dtype)
    )


def batch_topk(pre_BS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k*B largest ReLU activations over the whole batch (Bussmann et al. 2024 §3).

    Returns candidate latent indices idx_BM and values vals_BM, zero where not kept, so that
    exactly k*B entries are kept (fewer if fewer are positive). The cut is found among each
    row's top M = 4k; it is exact unless a row keeps all M candidates, in which case M grows
    (a row's other entries are no larger than its smallest candidate)."""
    B, S = pre_BS.shape
    m = min(S, 4 * k)
    while True:
        if m >= S:
            vals_BM = pre_BS.relu()
            idx_BM = torch.arange(S, device=pre_BS.device).expand(B, S).contiguous()
        else:
            vals_BM, idx_BM = pre_BS.topk(m, dim=-1, sorted=False)
            vals_BM = vals_BM.relu()
        pos_N = vals_BM.detach().flatten().topk(k * B, sorted=False).indices
        keep_BM = torch.zeros(B * vals_BM.shape[1], dtype=torch.bool, device=pre_BS.device)
        keep_BM = keep_BM.scatter_(0, pos_N, True).view(B, -1)
        if m >= S or not bool(keep_BM.all(dim=1).any()):
            return idx_BM, vals_BM * keep_BM
        m = min(S, 4 * m)


@torch.no_grad()
def update_threshold(sae: SAE, vals: Tensor, rate: float = THRESHOLD_EMA) -> None:
    """Running estimate of the smallest kept activation, used as a JumpReLU threshold at
    inference (Bussmann et al. 2024 §3). The first batch sets it; later ones move it by an EMA
    of this rate. A batch with no positive activation leaves it as it is. Written with `where`
    instead of branches, so that a GPU never waits to tell the host which branch to take."""
    m = torch.where(vals > 0, vals, torch.inf).min().to(sae.threshold.dtype)  # inf: none > 0
    learned = (sae.threshold > 0).any()  # has_learned_threshold, as a tensor
    moved = torch.where(learned, sae.threshold * (1 - rate) + rate * m, m)
    sae.threshold.copy_(torch.where(torch.isfinite(m), moved, sae.threshold))


def training_forward(
    sae: SAE,
    x_BD: Float[Tensor, "B d_in"],
    target_BO: Float[Tensor, "B d_out"] | None = None,
    dead_mask_S: Tensor | None = None,
    sparsity_scale: float = 1.0,
    threshold_rate: float = THRESHOLD_EMA,
) -> TrainOutput:
    """Loss of one batch; see `TrainOutput` for each field. Updates the BatchTopK threshold
    estimate (an EMA of `threshold_rate`) and clamps the JumpReLU threshold at zero as side
    effects."""
    cfg = sae.cfg
    arch = cfg.architecture
    if arch == "gated":
        raise ValueError(
            "architecture='gated' is inference-only (to read SAELens gated SAEs); train relu, "
            "topk, batchtopk, jumprelu or matryoshka instead."
        )
    if target_BO is None:
        if cfg.d_out is not None:
            raise ValueError(f"target is required for a transcoder (d_out={cfg.d_out}).")
        target_BO = x_BD
    if x_BD.ndim != 2 or x_BD.shape[0] < 2:
        raise ValueError(f"x has shape {tuple(x_BD.shape)}; training needs [B >= 2, d_in].")
    if target_BO.shape != (x_BD.shape[0], cfg.width_out):
        raise ValueError(
            f"target has shape {tuple(target_BO.shape)}; expected ({x_BD.shape[0]}, "
            f"{cfg.width_out})."
        )
    t_BO = target_BO
    var = total_variance(t_BO.float())  # FVU denominator, in float32 even under autocast
    base_BO = sae.b_dec + sae.skip(x_BD)
    sparsity = aux = x_BD.new_zeros((), dtype=torch.float32)
    inner = []

    if arch in ("relu", "jumprelu"):
        pre_BS = sae.pre_activations(x_BD)
        x_hat_BO, sparsity, codes = _dense_forward(sae, pre_BS, base_BO, var, sparsity_scale)
    else:  # TopK family: the sparse step of sae/sparse.py
        x_hat_BO, aux, codes, inner = _sparse_forward(
            sae, x_BD, t_BO, base_BO, var, dead_mask_S, threshold_rate
        )

    mse = fvu(x_hat_BO.float(), t_BO.float(), var)
    loss = mse + sparsity + aux + sum(inner, torch.zeros_like(mse))
    return TrainOutput(loss, mse, sparsity, aux, x_hat_BO, codes, cfg.d_sae)


def _dense_forward(sae: SAE, pre_BS: Tensor, base_BO: Tensor, var: Tensor, sparsity_scale: float):
    """relu and jumprelu: dense latents, decoder as a matmul; returns (x_hat, penalty, latents)."""
    cfg = sae.cfg
    if cfg.architecture == "relu":
        latents_BS = pre_BS.relu()
        x_hat_BO = latents_BS @ sae.W_dec + base_BO
        # Anthropic April 2024 update: L1 of each latent times its decoder row norm, so the
        # penalty cannot be dodged by shrinking activations and growing decoder rows. Divided
        # by the target's RMS norm to stay scale free like the FVU.
        l1 = (latents_BS * sae.W_dec.norm(dim=1)).sum(-1).mean() / var.sqrt()
        return x_hat_BO, cfg.l1_coefficient * sparsity_scale * l1, latents_BS.detach()
    with torch.no_grad():  # a negative threshold would let negative pre-activations through
        sae.threshold.clamp_(min=0.0)
    thr = sae.threshold.to(pre_BS.dtype)
    latents_BS = JumpReLUFn.apply(pre_BS, thr, cfg.jumprelu_bandwidth)
    x_hat_BO = latents_BS @ sae.W_dec + base_BO
    l0 = StepFn.apply(pre_BS, thr, cfg.jumprelu_bandwidth).sum(-1).mean()
    if cfg.target_l0 is not None:
        # Penalise distance from a target L0 instead of L0 itself (as the JumpReLU trainer
        # of saprmarks/dictionary_learning does).
        l0 = (l0 / cfg.target_l0 - 1).pow(2)
    return x_hat_BO, cfg.l0_coefficient * sparsity_scale * l0, latents_BS.detach()


def _sparse_forward(
    sae: SAE,
    x_BD: Tensor,
    t_BO: Tensor,
    base_BO: Tensor,
    var: Tensor,
    dead_mask_S: Tensor | None,
    threshold_rate: float,
):
    """TopK family. The encoder GEMM runs outside the graph; latents are selected (per row for
    topk, over the batch for batchtopk/matryoshka, plus AuxK's dead latents) and only the
    selected pre-activations carry gradient (`SelectedPre`), so the backward costs O(B k d)
    instead of another [B, d_in] x [d_in, d_sae] GEMM. Returns (x_hat, aux, codes, inner)."""
    cfg = sae.cfg
    centered = sae.centers_input
    with torch.no_grad():  # the encoder's input, once for the GEMM and every backward below
        xc_BD = x_BD - sae.b_dec if centered else x_BD
    pre_BS = encoder_pre(xc_BD, sae.W_enc, sae.b_enc)
    # what the selected pre-activations take gradients to, and the centred input
    enc = (x_BD, sae.W_enc, sae.b_enc, sae.b_dec, xc_BD)
    with torch.no_grad():
        if cfg.architecture == "topk":
            # Gao et al. 2024 §2.3: keep the k largest pre-activations (then ReLU).
            idx_BM = pre_BS.topk(cfg.k, dim=-1, sorted=False).indices
            keep_BM = None
        else:
            idx_BM, kept_BM = batch_topk(pre_BS, cfg.k)
            keep_BM = kept_BM > 0
    sel = SelectedPre.apply(*enc, pre_BS, idx_BM, centered)
    sel = sel.to(sae.W_dec.dtype)  # top-k values in float32 even under autocast
    vals_BM = sel.relu()
    if keep_BM is not None:
        vals_BM = vals_BM * keep_BM
    x_hat_BO = BagDecode.apply(idx_BM, vals_BM, sae.W_dec) + base_BO
    inner = []
    if cfg.architecture == "matryoshka":
        # Bussmann et al. 2025 §3: every nested prefix of latents must reconstruct the target on
        # its own; the loss sums their reconstruction losses.
        for m in cfg.prefixes[:-1]:
            vals_m = vals_BM * (idx_BM < m)
            x_m = BagDecode.apply(idx_BM, vals_m, sae.W_dec) + base_BO
            inner.append(fvu(x_m.float(), t_BO.float(), var))
    if cfg.architecture != "topk" and sae.training:
        update_threshold(sae, vals_BM.detach(), threshold_rate)
    aux = var.new_zeros(())
    dead_N = None if dead_mask_S is None else dead_mask_S.to(pre_BS.device).nonzero().squeeze(1)
    if dead_N is not None and len(dead_N) > 0:
        # AuxK (Gao et al. 2024 §A.2): the top aux_k dead latents reconstruct the main model's
        # residual (detached), scored as FVU of that residual so the coefficient is scale free.
        e_BO = (t_BO - x_hat_BO).detach().float()
        e_hat_BO = _dead_decode(sae, enc, pre_BS, dead_N, centered)
        aux = cfg.aux_coefficient * fvu(e_hat_BO.float(), e_BO, total_variance(e_BO))
    return x_hat_BO, aux, SparseCodes(vals_BM.detach(), idx_BM), inner


def _dead_decode(sae: SAE, enc: tuple, pre_BS: Tensor, dead_N: Tensor, centered: bool):
    """AuxK's reconstruction: each row's aux_k largest dead pre-activations (ReLU) times their
    decoder rows. With few dead latents (up to AUX_DENSE_LIMIT x aux_k) the dead columns are
    handled densely, small GEMMs over [B, n_dead]; with many, as gathered rows like the main
    latents (sae/sparse.py)."""
    k_aux, n = sae.cfg.k_aux, len(dead_N)
    if n > AUX_DENSE_LIMIT * k_aux:
        with torch.no_grad():
            pos_BK = pre_BS[:, dead_N].topk(min(k_aux, n), dim=-1, sorted=False).indices
        idx_BK = dead_N[pos_BK]
        vals_BK = SelectedPre.apply(*enc, pre_BS, idx_BK, centered)
        return BagDecode.apply(idx_BK, vals_BK.to(sae.W_dec.dtype).relu(), sae.W_dec)
    pre_BN = ColumnsPre.apply(*enc, pre_BS, dead_N, centered)
    act_BN = pre_BN.to(sae.W_dec.dtype).relu()
    if n > k_aux:
        with torch.no_grad():
            pos_BK = pre_BN.topk(k_aux, dim=-1, sorted=False).indices
            keep_BN = torch.zeros_like(act_BN).scatter_(1, pos_BK, 1.0)
        act_BN = act_BN * keep_BN
    return act_BN @ sae.W_dec.index_select(0, dead_N)
