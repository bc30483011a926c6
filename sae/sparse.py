"""Sparse training kernels for the TopK family: gradients that touch only the selected latents.

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


@torch.no_grad()
def encoder_pre(xc_BD: Tensor, W_enc_DS: Tensor, b_enc_S: Tensor) -> Tensor:
    """xc @ W_enc + b_enc (xc: the encoder's input, x - b_dec when centred) as one addmm,
    outside the autograd graph."""
    return torch.addmm(b_enc_S.to(xc_BD.dtype), xc_BD, W_enc_DS.to(xc_BD.dtype))


def argsort_small(keys_N: Tensor, n_keys: int) -> Tensor:
    """A permutation that sorts `keys_N` (ints in [0, n_keys)). On CPU with n_keys <= 65536 it is
    numpy's radix sort on uint16 keys: single-threaded, and steady where torch's parallel sort
    slowed by orders of magnitude when other jobs shared the cores (BENCHMARKS.md, 'Inside the
    training step')."""
    if keys_N.device.type == "cpu" and n_keys <= 2**16:
        order = np.argsort(keys_N.numpy().astype(np.uint16), kind="stable")
        return torch.from_numpy(order)
    return keys_N.argsort()


def segment_sum_rows(idx_BM: Tensor, w_BM: Tensor, rows_BD: Tensor, n_out: int) -> Tensor:
    """out[s] = sum over (b, m) with idx[b, m] == s of w[b, m] * rows[b], shape [n_out, D]:
    the weight gradient of a sparse product, from the selected entries only.

    Sorting the indices once turns the scatter into bags of consecutive entries, which
    `F.embedding_bag` sums with per-sample weights in one vectorised pass (no [B*M, D]
    temporary of weighted rows, no atomic adds)."""
    B, M = idx_BM.shape
    flat_N = idx_BM.flatten()
    order_N = argsort_small(flat_N, n_out)
    # Bag s starts after the entries of keys < s. Counted with scatter_add_, not bincount: on
    # CUDA bincount reads the largest key back to the host, a synchronisation per call.
    counts_S = torch.zeros(n_out, dtype=torch.long, device=idx_BM.device)
    counts_S.scatter_add_(0, flat_N, torch.ones_like(flat_N))
    offsets_S = torch.zeros_like(counts_S)
    torch.cumsum(counts_S[:-1], 0, out=offsets_S[1:])
    return F.embedding_bag(
        torch.div(order_N, M, rounding_mode="floor"),
        rows_BD,
        offsets_S,
        mode="sum",
        per_sample_weights=w_BM.flatten()[order_N].to(rows_BD.dtype),
    )


def gathered_dot(idx_BM: Tensor, table_SD: Tensor, v_BD: Tensor) -> Tensor:
    """out[b, m] = table[idx[b, m]] . v[b]: the per-sample-weight gradient of a bag sum, by
    torch's own kernel for it (one pass over the gathered rows, no [B, M, D] temporary; 10x
    faster here than a chunked gather + bmm)."""
    B, M = idx_BM.shape
    offsets_B = torch.arange(0, B * M, M, device=idx_BM.device)
    bag_N = torch.arange(B, device=idx_BM.device).repeat_interleave(M)
    out_N = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        v_BD, table_SD.to(v_BD.dtype), idx_BM.flatten(), offsets_B, bag_N, 0
    )
    return out_N.view(B, M)


class SelectedPre(torch.autograd.Function):
    """pre[b, idx[b, m]] for pre = (x - b_dec) @ W_enc + b_enc, already computed as `pre_BS`.

    Backward from the B x M selected gradients g: grad_W_enc[:, s] = sum g[b, m] x_c[b] over the
    entries that selected s; grad_b_enc = the same sums of g; grad_b_dec = -W_enc @ grad_b_enc
    (b_dec enters as x - b_dec, and sum_b grad_x[b] = W_enc @ grad_b_enc); grad_x[b] =
    sum_m g[b, m] W_enc[:, idx[b, m]] when x needs it."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DS, b_enc_S, b_dec_D, xc_BD, pre_BS, idx_BM, centered: bool):
        ctx.save_for_backward(xc_BD, W_enc_DS, idx_BM)
        ctx.centered = centered
        return pre_BS.gather(1, idx_BM)

    @staticmethod
    def backward(ctx, g_BM):
        xc_BD, W_enc_DS, idx_BM = ctx.saved_tensors
        S = W_enc_DS.shape[1]
        need = ctx.needs_input_grad
        g_BM = g_BM.contiguous()
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need[1]:
            grad_W = segment_sum_rows(idx_BM, g_BM, xc_BD.to(g_BM.dtype), S).T
            grad_W = grad_W.to(W_enc_DS.dtype).contiguous()
        if need[2] or (ctx.centered and need[3]):
            grad_b_enc = torch.zeros(S, dtype=g_BM.dtype, device=g_BM.device)
            grad_b_enc.index_add_(0, idx_BM.flatten(), g_BM.flatten())
        if ctx.centered and need[3]:
            grad_b_dec = -(W_enc_DS.to(g_BM.dtype) @ grad_b_enc)
        if need[0]:
            W_SD = W_enc_DS.T.contiguous().to(g_BM.dtype)
            grad_x = F.embedding_bag(idx_BM, W_SD, mode="sum", per_sample_weights=g_BM)
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
    def forward(ctx, x_BD, W_enc_DS, b_enc_S, b_dec_D, xc_BD, pre_BS, cols_N, centered: bool):
        ctx.save_for_backward(xc_BD, W_enc_DS, cols_N)
        ctx.centered = centered
        return pre_BS.index_select(1, cols_N)

    @staticmethod
    def backward(ctx, g_BN):
        xc_BD, W_enc_DS, cols_N = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_BN = g_BN.contiguous()
        W_DN = W_enc_DS.index_select(1, cols_N).to(g_BN.dtype)
        g_N = g_BN.sum(0)
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need[1]:
            grad_W = torch.zeros_like(W_enc_DS)
            grad_W.index_copy_(1, cols_N, (xc_BD.to(g_BN.dtype).T @ g_BN).to(W_enc_DS.dtype))
        if need[2]:
            grad_b_enc = torch.zeros(W_enc_DS.shape[1], dtype=g_BN.dtype, device=g_BN.device)
            grad_b_enc.index_copy_(0, cols_N, g_N)
        if ctx.centered and need[3]:
            grad_b_dec = -(W_DN @ g_N)
        if need[0]:
            grad_x = g_BN @ W_DN.T
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None, None


class BagDecode(torch.autograd.Function):
    """sum_m vals[b, m] * W_dec[idx[b, m]]: forward one `embedding_bag`; backward
    grad_vals[b, m] = W_dec[idx[b, m]] . grad[b] and grad_W_dec[s] = sum vals * grad[b] over
    the entries that selected s, both on the gathered rows only."""

    @staticmethod
    def forward(ctx, idx_BM, vals_BM, W_dec_SO):
        ctx.save_for_backward(idx_BM, vals_BM, W_dec_SO)
        return F.embedding_bag(
            idx_BM, W_dec_SO, mode="sum", per_sample_weights=vals_BM.to(W_dec_SO.dtype)
        )

    @staticmethod
    def backward(ctx, grad_BO):
        idx_BM, vals_BM, W_dec_SO = ctx.saved_tensors
        grad_BO = grad_BO.contiguous()
        grad_vals = grad_W = None
        if ctx.needs_input_grad[1]:
            grad_vals = gathered_dot(idx_BM, W_dec_SO, grad_BO).to(vals_BM.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = segment_sum_rows(idx_BM, vals_BM, grad_BO, W_dec_SO.shape[0])
            grad_W = grad_W.to(W_dec_SO.dtype)
        return None, grad_vals, grad_W
