"""What one training step computes, for every architecture: the loss and its terms.

    out = training_forward(sae, x_BD, target_BO, dead_S, sparsity_scale, threshold_rate)
    out.loss.backward()  # sae/training/train.py then averages, clips, steps Adam, renormalises

    loss = FVU(x_hat, target) + sparsity + aux (+ the FVU of each Matryoshka prefix)

    relu        latents = ReLU(pre); sparsity = λ1 · Σ_s a_s ‖W_dec[s]‖ / rms(target)
    jumprelu    latents = pre · H(pre − θ); sparsity = λ0 · L0, or λ0 · (L0 / target_l0 − 1)²
    topk        the k largest pre-activations of each row (then ReLU)
    batchtopk   the k·B largest ReLU activations of the whole batch
    matryoshka  batchtopk, and every nested prefix of latents reconstructs the target alone
    aux         TopK family: AuxK, the top k_aux dead latents reconstruct the residual

The reconstruction term is always the FVU: squared error summed over dimensions, mean over the
batch, divided by the target's variance about its batch mean (summed over dimensions), so the
loss does not depend on the activations' scale and one learning rate serves every layer and
model (as in EleutherAI/sparsify). TopK-family steps are sparse (sae/model/kernels.py): the
encoder GEMM runs outside the graph, only the B × k selected pre-activations carry gradient, and
no dense [B, d_sae] latent tensor is made.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sae.model.kernels import (
    BagDecode,
    JumpReLUFn,
    SelectedPre,
    StepFn,
    batch_topk,
    dead_decode,
    encoder_pre,
)
from sae.model.sae import SAE, SparseCodes

# Least per-step rate of the running BatchTopK threshold estimate (SAELens's topk_threshold_lr);
# the trainer uses a faster one in short runs (sae/training/members.py, threshold_rate).
THRESHOLD_EMA = 0.01


class Batch(NamedTuple):
    """One training batch of one SAE."""

    x: Float[Tensor, "B d_in"]
    """the SAE's input rows."""
    y: Float[Tensor, "B d_out"] | None = None
    """a transcoder's target rows; None: the SAE reconstructs `x`."""


class TrainOutput(NamedTuple):
    loss: Tensor
    """Scalar to backpropagate: mse + sparsity + aux (+ the inner prefix FVUs for matryoshka)."""
    mse: Tensor
    """Reconstruction error as FVU: squared error summed over dims, mean over the batch, divided
    by the target's variance about its batch mean (summed over dims). 1.0 = predicting the mean."""
    sparsity: Tensor
    """Sparsity penalty as added to the loss (coefficient and warm-up applied); 0 for TopK."""
    aux: Tensor
    """AuxK loss as added to the loss (coefficient applied); 0 when nothing is dead."""
    x_hat: Tensor
    """Reconstruction [B, width_out] (with gradient)."""
    codes: SparseCodes | Tensor
    """Latent activations, detached: `SparseCodes` for the TopK family (no dense [B, d_sae] is
    made in training), a dense [B, d_sae] tensor for relu/jumprelu."""
    d_sae: int
    """Number of latents (to densify `codes`)."""

    @property
    def latents(self) -> Tensor:
        """Latent activations as a dense [B, d_sae] tensor (materialised on demand)."""
        c = self.codes
        return c.to_dense(self.d_sae) if isinstance(c, SparseCodes) else c

    def fired(self) -> Tensor:
        """bool [d_sae]: latents active on at least one row of the batch. Counted with
        `index_add_` rather than selected by a boolean mask, which would make a GPU wait for the
        mask's size (a host synchronisation) every training step."""
        c = self.codes
        if isinstance(c, SparseCodes):
            hits = torch.zeros(self.d_sae, dtype=torch.int32, device=c.top_indices.device)
            active = (c.top_acts != 0).flatten().to(torch.int32)
            return hits.index_add_(0, c.top_indices.flatten(), active) > 0
        return (c != 0).any(0)

    def l0(self) -> Tensor:
        """Mean number of active latents per row (a 0-d tensor)."""
        c = self.codes
        active = c.top_acts != 0 if isinstance(c, SparseCodes) else c != 0
        return active.sum(-1).float().mean()


def total_variance(t_BO: Tensor) -> Tensor:
    """Variance of the rows about their mean, summed over dimensions (the FVU denominator)."""
    mean_BO = t_BO.mean(0).expand_as(t_BO)
    return (F.mse_loss(t_BO, mean_BO, reduction="sum") / len(t_BO)).clamp_min(1e-12)


def fvu(x_hat_BO: Tensor, t_BO: Tensor, var: Tensor) -> Tensor:
    """Squared error summed over dimensions, mean over rows, over `var`. `F.mse_loss` forms
    the error and its square in one pass each way (half the time of sub, pow, sum here)."""
    return F.mse_loss(x_hat_BO, t_BO, reduction="sum") / (len(t_BO) * var)


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
    target_BO = _check_batch(sae, x_BD, target_BO)
    var = total_variance(target_BO.float())  # FVU denominator, in float32 even under autocast
    base_BO = sae.b_dec + sae.skip(x_BD)
    zero = x_BD.new_zeros((), dtype=torch.float32)
    sparsity, aux, inner = zero, zero, []
    if cfg.architecture == "relu":
        x_hat_BO, sparsity, codes = _relu(sae, x_BD, base_BO, var, sparsity_scale)
    elif cfg.architecture == "jumprelu":
        x_hat_BO, sparsity, codes = _jumprelu(sae, x_BD, base_BO, sparsity_scale)
    else:
        x_hat_BO, aux, codes, inner = _topk_family(
            sae, x_BD, target_BO, base_BO, var, dead_mask_S, threshold_rate
        )
    mse = fvu(x_hat_BO.float(), target_BO.float(), var)
    loss = mse + sparsity + aux + sum(inner, torch.zeros_like(mse))
    return TrainOutput(loss, mse, sparsity, aux, x_hat_BO, codes, cfg.d_sae)


def _relu(sae: SAE, x_BD: Tensor, base_BO: Tensor, var: Tensor, sparsity_scale: float):
    """Dense ReLU latents, decoder as a matmul; returns (x_hat, penalty, latents)."""
    latents_BS = sae.pre_activations(x_BD).relu()
    x_hat_BO = latents_BS @ sae.W_dec + base_BO
    # Anthropic April 2024 update: L1 of each latent times its decoder row norm, so the penalty
    # cannot be dodged by shrinking activations and growing decoder rows. Divided by the
    # target's RMS norm to stay scale free like the FVU.
    l1 = (latents_BS * sae.W_dec.norm(dim=1)).sum(-1).mean() / var.sqrt()
    return x_hat_BO, sae.cfg.l1_coefficient * sparsity_scale * l1, latents_BS.detach()


def _jumprelu(sae: SAE, x_BD: Tensor, base_BO: Tensor, sparsity_scale: float):
    """JumpReLU latents and an L0 penalty, both through the straight-through estimators of
    Rajamanoharan et al. 2024 (eq. 11-12); returns (x_hat, penalty, latents)."""
    cfg = sae.cfg
    pre_BS = sae.pre_activations(x_BD)
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


def _topk_family(
    sae: SAE,
    x_BD: Tensor,
    t_BO: Tensor,
    base_BO: Tensor,
    var: Tensor,
    dead_mask_S: Tensor | None,
    threshold_rate: float,
):
    """topk, batchtopk, matryoshka. Latents are selected under no_grad (per row for topk, over
    the batch otherwise) and only the selected pre-activations carry gradient (`SelectedPre`),
    so the backward costs O(B k d) instead of another [B, d_in] x [d_in, d_sae] GEMM. Returns
    (x_hat, aux, codes, the Matryoshka prefixes' FVUs)."""
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
            idx_BK = pre_BS.topk(cfg.k, dim=-1, sorted=False).indices
            keep_BK = None
        else:  # Bussmann et al. 2024 §3: the k·B largest over the batch
            idx_BK, kept_BK = batch_topk(pre_BS, cfg.k)
            keep_BK = kept_BK > 0
    sel = SelectedPre.apply(*enc, pre_BS, idx_BK, centered)
    vals_BK = sel.to(sae.W_dec.dtype).relu()  # top-k values in float32 even under autocast
    if keep_BK is not None:
        vals_BK = vals_BK * keep_BK
    x_hat_BO = BagDecode.apply(idx_BK, vals_BK, sae.W_dec) + base_BO
    inner = []
    if cfg.architecture == "matryoshka":
        # Bussmann et al. 2025 §3: every nested prefix of latents must reconstruct the target on
        # its own; the loss sums their reconstruction losses.
        for m in cfg.prefixes[:-1]:
            x_m = BagDecode.apply(idx_BK, vals_BK * (idx_BK < m), sae.W_dec) + base_BO
            inner.append(fvu(x_m.float(), t_BO.float(), var))
    if cfg.architecture != "topk" and sae.training:
        update_threshold(sae, vals_BK.detach(), threshold_rate)
    aux = var.new_zeros(())
    dead_L = None if dead_mask_S is None else dead_mask_S.to(pre_BS.device).nonzero().squeeze(1)
    if dead_L is not None and len(dead_L) > 0:
        # AuxK (Gao et al. 2024 §A.2): the top aux_k dead latents reconstruct the main model's
        # residual (detached), scored as FVU of that residual so the coefficient is scale free.
        e_BO = (t_BO - x_hat_BO).detach().float()
        e_hat_BO = dead_decode(enc, pre_BS, dead_L, cfg.k_aux, sae.W_dec, centered)
        aux = cfg.aux_coefficient * fvu(e_hat_BO.float(), e_BO, total_variance(e_BO))
    return x_hat_BO, aux, SparseCodes(vals_BK.detach(), idx_BK), inner


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


def _check_batch(sae: SAE, x_BD: Tensor, target_BO: Tensor | None) -> Tensor:
    """The batch's target (x itself for an SAE), or a ValueError naming what is wrong."""
    cfg = sae.cfg
    if cfg.architecture == "gated":
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
    return target_BO
