"""The kernels behind the training step (sae/model/step.py): the sparse TopK-family step, whose
gradients touch only the selected latents, batch top-k selection, AuxK's dead-latent decode, and
JumpReLU's straight-through estimators.

A TopK step selects k of d_sae pre-activations per token. Plain autograd then backpropagates a
dense [B, d_sae] gradient that is zero almost everywhere: the encoder weight gradient
x^T @ grad_pre costs as much as the encoder itself, and the decoder bag's backward sorts every
index. Here the encoder's weight gradient is built from the B x k selected gradients only
(grad_W_enc[:, s] = sum over the (b, j) that selected s of g[b, j] * x_c[b]), as in
EleutherAI/sparsify's fused encoder (and Gao et al. 2024 §D, "sparse kernels"), and the
decoder's gradients are formed on the gathered rows only. Selection (which latents) happens
outside, under no_grad; these functions only carry values and gradients.

    xc_BD = x_BD - b_dec                                        # once, no graph
    pre_BS = encoder_pre(xc_BD, W_enc, b_enc)                   # no graph, one GEMM
    vals_BK, idx_BK = pre_BS.topk(k, sorted=False)
    vals_BK = SelectedPre.apply(x_BD, W_enc, b_enc, b_dec, xc_BD, pre_BS, idx_BK, centered)
    x_hat_BD = BagDecode.apply(idx_BK, vals_BK.relu(), W_dec) + b_dec
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Shapes: K the latents selected per row (top-k, or batch top-k's candidates), Z the B*K selected
# entries flattened, L the dead latents AuxK reads (module-local letters; ARCHITECTURE.md).

# AuxK handles the dead latents densely (small GEMMs over [B, n_dead]) while n_dead is at most
# this many times aux_k, and as gathered rows beyond (BENCHMARKS.md, 'Inside the training step').
AUX_DENSE_LIMIT = 4


@torch.no_grad()
def encoder_pre(xc_BD: Tensor, W_enc_DS: Tensor, b_enc_S: Tensor) -> Tensor:
    """xc @ W_enc + b_enc (xc: the encoder's input, x - b_dec when centred) as one addmm,
    outside the autograd graph."""
    return torch.addmm(b_enc_S.to(xc_BD.dtype), xc_BD, W_enc_DS.to(xc_BD.dtype))


def argsort_small(keys_Z: Tensor, n_keys: int) -> Tensor:
    """A permutation that sorts `keys_Z` (ints in [0, n_keys)). On CPU with n_keys <= 65536 it is
    numpy's radix sort on uint16 keys: single-threaded, and steady where torch's parallel sort
    slowed by orders of magnitude when other jobs shared the cores (BENCHMARKS.md, 'Inside the
    training step')."""
    if keys_Z.device.type == "cpu" and n_keys <= 2**16:
        order = np.argsort(keys_Z.numpy().astype(np.uint16), kind="stable")
        return torch.from_numpy(order)
    return keys_Z.argsort()


def segment_sum_rows(idx_BK: Tensor, w_BK: Tensor, rows_BD: Tensor, n_out: int) -> Tensor:
    """out[s] = sum over (b, m) with idx[b, m] == s of w[b, m] * rows[b], shape [n_out, D]:
    the weight gradient of a sparse product, from the selected entries only.

    Sorting the indices once turns the scatter into bags of consecutive entries, which
    `F.embedding_bag` sums with per-sample weights in one vectorised pass (no [B*K, D]
    temporary of weighted rows, no atomic adds)."""
    B, K = idx_BK.shape
    flat_Z = idx_BK.flatten()
    order_Z = argsort_small(flat_Z, n_out)
    # Bag s starts after the entries of keys < s. Counted with scatter_add_, not bincount: on
    # CUDA bincount reads the largest key back to the host, a synchronisation per call.
    counts_S = torch.zeros(n_out, dtype=torch.long, device=idx_BK.device)
    counts_S.scatter_add_(0, flat_Z, torch.ones_like(flat_Z))
    offsets_S = torch.zeros_like(counts_S)
    torch.cumsum(counts_S[:-1], 0, out=offsets_S[1:])
    return F.embedding_bag(
        torch.div(order_Z, K, rounding_mode="floor"),
        rows_BD,
        offsets_S,
        mode="sum",
        per_sample_weights=w_BK.flatten()[order_Z].to(rows_BD.dtype),
    )


def gathered_dot(idx_BK: Tensor, table_SD: Tensor, v_BD: Tensor) -> Tensor:
    """out[b, m] = table[idx[b, m]] . v[b]: the per-sample-weight gradient of a bag sum, by
    torch's own kernel for it (one pass over the gathered rows, no [B, K, D] temporary; 10x
    faster here than a chunked gather + bmm)."""
    B, K = idx_BK.shape
    offsets_B = torch.arange(0, B * K, K, device=idx_BK.device)
    bag_Z = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
    out_Z = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        v_BD, table_SD.to(v_BD.dtype), idx_BK.flatten(), offsets_B, bag_Z, 0
    )
    return out_Z.view(B, K)


class SelectedPre(torch.autograd.Function):
    """pre[b, idx[b, m]] for pre = (x - b_dec) @ W_enc + b_enc, already computed as `pre_BS`.

    Backward from the B x K selected gradients g: grad_W_enc[:, s] = sum g[b, j] x_c[b] over the
    entries that selected s; grad_b_enc = the same sums of g; grad_b_dec = -W_enc @ grad_b_enc
    (b_dec enters as x - b_dec, and sum_b grad_x[b] = W_enc @ grad_b_enc); grad_x[b] =
    sum_m g[b, m] W_enc[:, idx[b, m]] when x needs it."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DS, b_enc_S, b_dec_D, xc_BD, pre_BS, idx_BK, centered: bool):
        ctx.save_for_backward(xc_BD, W_enc_DS, idx_BK)
        ctx.centered = centered
        return pre_BS.gather(1, idx_BK)

    @staticmethod
    def backward(ctx, g_BK):
        xc_BD, W_enc_DS, idx_BK = ctx.saved_tensors
        S = W_enc_DS.shape[1]
        need = ctx.needs_input_grad
        g_BK = g_BK.contiguous()
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need[1]:
            grad_W = segment_sum_rows(idx_BK, g_BK, xc_BD.to(g_BK.dtype), S).T
            grad_W = grad_W.to(W_enc_DS.dtype).contiguous()
        if need[2] or (ctx.centered and need[3]):
            grad_b_enc = torch.zeros(S, dtype=g_BK.dtype, device=g_BK.device)
            grad_b_enc.index_add_(0, idx_BK.flatten(), g_BK.flatten())
        if ctx.centered and need[3]:
            grad_b_dec = -(W_enc_DS.to(g_BK.dtype) @ grad_b_enc)
        if need[0]:
            W_SD = W_enc_DS.T.contiguous().to(g_BK.dtype)
            grad_x = F.embedding_bag(idx_BK, W_SD, mode="sum", per_sample_weights=g_BK)
        if grad_b_enc is not None and not need[2]:
            grad_b_enc = None
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None, None


class ColumnsPre(torch.autograd.Function):
    """pre[:, cols] for pre = (x - b_dec) @ W_enc + b_enc, already computed as `pre_BS`: every
    row's pre-activations of a few latents (AuxK's dead ones), dense.

    Backward from the [B, n] gradient g: grad_W_enc[:, cols] = x_c^T g (one [d, B] x [B, n]
    GEMM); grad_b_enc[cols] = sum_b g; grad_b_dec = -W_enc[:, cols] @ sum_b g; grad_x =
    g @ W_enc[:, cols]^T when x needs it. Columns not in `cols` get zero."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DS, b_enc_S, b_dec_D, xc_BD, pre_BS, cols_L, centered: bool):
        ctx.save_for_backward(xc_BD, W_enc_DS, cols_L)
        ctx.centered = centered
        return pre_BS.index_select(1, cols_L)

    @staticmethod
    def backward(ctx, g_BL):
        xc_BD, W_enc_DS, cols_L = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_BL = g_BL.contiguous()
        W_DL = W_enc_DS.index_select(1, cols_L).to(g_BL.dtype)
        g_L = g_BL.sum(0)
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need[1]:
            grad_W = torch.zeros_like(W_enc_DS)
            grad_W.index_copy_(1, cols_L, (xc_BD.to(g_BL.dtype).T @ g_BL).to(W_enc_DS.dtype))
        if need[2]:
            grad_b_enc = torch.zeros(W_enc_DS.shape[1], dtype=g_BL.dtype, device=g_BL.device)
            grad_b_enc.index_copy_(0, cols_L, g_L)
        if ctx.centered and need[3]:
            grad_b_dec = -(W_DL @ g_L)
        if need[0]:
            grad_x = g_BL @ W_DL.T
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None, None


class BagDecode(torch.autograd.Function):
    """sum_m vals[b, m] * W_dec[idx[b, m]]: forward one `embedding_bag`; backward
    grad_vals[b, m] = W_dec[idx[b, m]] . grad[b] and grad_W_dec[s] = sum vals * grad[b] over
    the entries that selected s, both on the gathered rows only."""

    @staticmethod
    def forward(ctx, idx_BK, vals_BK, W_dec_SO):
        ctx.save_for_backward(idx_BK, vals_BK, W_dec_SO)
        return F.embedding_bag(
            idx_BK, W_dec_SO, mode="sum", per_sample_weights=vals_BK.to(W_dec_SO.dtype)
        )

    @staticmethod
    def backward(ctx, grad_BO):
        idx_BK, vals_BK, W_dec_SO = ctx.saved_tensors
        grad_BO = grad_BO.contiguous()
        grad_vals = grad_W = None
        if ctx.needs_input_grad[1]:
            grad_vals = gathered_dot(idx_BK, W_dec_SO, grad_BO).to(vals_BK.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = segment_sum_rows(idx_BK, vals_BK, grad_BO, W_dec_SO.shape[0])
            grad_W = grad_W.to(W_dec_SO.dtype)
        return None, grad_vals, grad_W


def batch_topk(pre_BS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k*B largest ReLU activations over the whole batch (Bussmann et al. 2024 §3).

    Returns candidate latent indices idx_BK and values vals_BK (K: candidates per row, zero where
    not kept), so that exactly k*B entries are kept (fewer if fewer are positive). The cut is
    found among each row's top 4k; it is exact unless a row keeps all its candidates, in which
    case the candidates grow fourfold (a row's other entries are no larger than its smallest
    candidate)."""
    B, S = pre_BS.shape
    m = min(S, 4 * k)
    while True:
        if m >= S:
            vals_BK = pre_BS.relu()
            idx_BK = torch.arange(S, device=pre_BS.device).expand(B, S).contiguous()
        else:
            vals_BK, idx_BK = pre_BS.topk(m, dim=-1, sorted=False)
            vals_BK = vals_BK.relu()
        pos_Z = vals_BK.detach().flatten().topk(k * B, sorted=False).indices
        keep_BK = torch.zeros(B * vals_BK.shape[1], dtype=torch.bool, device=pre_BS.device)
        keep_BK = keep_BK.scatter_(0, pos_Z, True).view(B, -1)
        if m >= S or not bool(keep_BK.all(dim=1).any()):
            return idx_BK, vals_BK * keep_BK
        m = min(S, 4 * m)


def dead_decode(
    enc: tuple, pre_BS: Tensor, dead_L: Tensor, k_aux: int, W_dec_SO: Tensor, centered: bool
) -> Tensor:
    """AuxK's reconstruction (`enc` as for `SelectedPre`): each row's k_aux largest dead pre-activations (ReLU) times their
    decoder rows. With few dead latents (up to AUX_DENSE_LIMIT x aux_k) the dead columns are
    handled densely, small GEMMs over [B, n_dead]; with many, as gathered rows like the main
    latents."""
    n = len(dead_L)
    if n > AUX_DENSE_LIMIT * k_aux:
        with torch.no_grad():
            pos_BK = pre_BS[:, dead_L].topk(min(k_aux, n), dim=-1, sorted=False).indices
        idx_BK = dead_L[pos_BK]
        vals_BK = SelectedPre.apply(*enc, pre_BS, idx_BK, centered)
        return BagDecode.apply(idx_BK, vals_BK.to(W_dec_SO.dtype).relu(), W_dec_SO)
    pre_BL = ColumnsPre.apply(*enc, pre_BS, dead_L, centered)
    act_BL = pre_BL.to(W_dec_SO.dtype).relu()
    if n > k_aux:
        with torch.no_grad():
            pos_BK = pre_BL.topk(k_aux, dim=-1, sorted=False).indices
            keep_BL = torch.zeros_like(act_BL).scatter_(1, pos_BK, 1.0)
        act_BL = act_BL * keep_BL
    return act_BL @ W_dec_SO.index_select(0, dead_L)


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
