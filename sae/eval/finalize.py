"""Turn the streaming state into feature records: quantile bins and their samples, correlations,
logit effects, decoder alignment with neurons (definitions: docs/methods.md#feature-records).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sae.eval.accumulate import HIST_EDGES


def quantile_bins(
    hist_MH: Tensor, fired_M: Tensor, max_M: Tensor, n_bins: int
) -> tuple[Tensor, Tensor]:
    """(edges [M, n_bins+1], counts [M, n_bins]) of equal-mass bins of each latent's nonzero
    activations, edges on histogram edges (so counts are exact): bin j is [e_j, e_{j+1}), the
    last bin [e_{n-1}, max] (closed), e_0 = 0 and e_n = max."""
    M, H = hist_MH.shape
    cum_MH = hist_MH.cumsum(1)
    frac_J = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    target_MJ = fired_M[:, None].double() * frac_J[None, :]
    h_MJ = torch.searchsorted(cum_MH.double().contiguous(), target_MJ.contiguous()).clamp(max=H - 1)
    # Inner edge g = the upper edge of the histogram bin where the cumulative count crosses
    # j/n, but never above the lower edge of the bin holding the maximum, so that every edge is
    # a histogram edge <= max and the counts below it are exact.
    h_max_M = (torch.bucketize(max_M.double(), HIST_EDGES, right=True) - 1).clamp(0, H - 1)
    g_MJ = torch.minimum(h_MJ + 1, h_max_M[:, None])
    inner_MJ = HIST_EDGES[g_MJ].float()
    below_MJ = torch.where(g_MJ > 0, cum_MH.gather(1, (g_MJ - 1).clamp_min(0)), 0)
    edges = torch.cat([torch.zeros(M, 1), inner_MJ, max_M[:, None]], 1)
    cuts = torch.cat([torch.zeros(M, 1, dtype=torch.int64), below_MJ, fired_M[:, None]], 1)
    dead = fired_M == 0
    edges[dead] = 0.0
    return edges, (cuts[:, 1:] - cuts[:, :-1]).clamp_min(0) * ~dead[:, None]


def pick_samples(val_MR: Tensor, id_MR: Tensor, edges_MJ: Tensor, per_bin: int) -> Tensor:
    """Bin index of each reservoir event chosen as a sample (−1: not chosen); the first
    `per_bin` events of each bin in key order, i.e. a uniform draw within the bin."""
    n_bins = edges_MJ.shape[1] - 1
    inner = edges_MJ[:, 1:-1].contiguous()
    bin_MR = torch.searchsorted(inner, val_MR.contiguous(), right=True)
    valid = (id_MR >= 0) & (val_MR > 0) & (val_MR <= edges_MJ[:, -1:])
    out = torch.full_like(bin_MR, -1)
    for j in range(n_bins):
        hit = valid & (bin_MR == j)
        out = torch.where(hit & (hit.cumsum(1) <= per_bin), j, out)
    return out


def _top_abs(r_CX: Tensor, n: int, exclude_C: Tensor | None = None) -> tuple[Tensor, Tensor]:
    score = r_CX.abs().nan_to_num(-1.0)
    if exclude_C is not None:
        score[torch.arange(len(score)), exclude_C] = -2.0
    idx = score.topk(min(n, r_CX.shape[1]), dim=1).indices
    return idx, r_CX.gather(1, idx)


def correlations(state: dict[str, Tensor], n: int, chunk: int = 1024) -> dict[str, Tensor]:
    """Top-`n` latents and input coordinates by |Pearson r| with each latent, with r and cosine."""
    N = float(state["n_tokens"])
    mu_M = state["sum_M"] / N
    sd_M = (state["sum_sq_M"] / N - mu_M**2).clamp_min(0).sqrt()
    mux_D = state["x_sum_D"] / N
    sdx_D = (state["x_sum_sq_D"] / N - mux_D**2).clamp_min(0).sqrt()
    out: dict[str, list[Tensor]] = {k: [] for k in ("nidx", "nr", "ncos", "lidx", "lr", "lcos")}
    M = len(mu_M)
    for s in range(0, M, chunk):
        sl = slice(s, s + chunk)
        ax = state["ax_MD"][sl]
        r = (ax / N - mu_M[sl, None] * mux_D) / (sd_M[sl, None] * sdx_D)
        idx, val = _top_abs(r, n)
        cos = ax / (state["sum_sq_M"][sl, None].sqrt() * state["x_sum_sq_D"].sqrt())
        out["nidx"].append(idx)
        out["nr"].append(val)
        out["ncos"].append(cos.gather(1, idx))
        if "aa_MM" in state:
            aa = state["aa_MM"][sl]
            r = (aa / N - mu_M[sl, None] * mu_M) / (sd_M[sl, None] * sd_M)
            idx, val = _top_abs(r, n, torch.arange(s, min(s + chunk, M)))
            cos = aa / (state["sum_sq_M"][sl, None].sqrt() * state["sum_sq_M"].sqrt())
            out["lidx"].append(idx)
            out["lr"].append(val)
            out["lcos"].append(cos.gather(1, idx))
    res = {f"corr_neuron_{k[1:]}": torch.cat(v) for k, v in out.items() if v and k[0] == "n"}
    res |= {f"corr_latent_{k[1:]}": torch.cat(v) for k, v in out.items() if v and k[0] == "l"}
    return {k: v.nan_to_num(0.0) if v.is_floating_point() else v for k, v in res.items()}


def logit_effects(
    W_dec_MD: Tensor, model: nn.Module | None, n: int, bins: int, chunk: int = 256
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Top/bottom tokens of W_dec·W_U (models with an unembedding), else the input-embedding
    tokens nearest in cosine (encoders such as BERT/MiniLM); plus a histogram over the vocabulary."""
    if model is None:
        return {}, {"kind": None, "skipped": "no model: activations come from a file"}
    D = W_dec_MD.shape[1]
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    in_emb = model.get_input_embeddings()
    if out_emb is not None and out_emb.weight.shape[1] == D:
        E_VD, kind = out_emb.weight.detach().float().cpu(), "unembedding"
        gamma_D = final_norm_scale(model, out_emb, D)
        W = W_dec_MD.float()
        if gamma_D is None:
            note = "W_dec · W_U: the direct effect of the latent's write on the logits (no final norm found)"
        else:
            W = W * gamma_D
            note = (
                "W_dec · diag(γ) · W_U: the direct effect of the latent's write on the logits "
                "through the final norm's scale γ (its 1/rms and any centering ignored)"
            )
    elif in_emb is not None and in_emb.weight.shape[1] == D:
        E_VD, kind = (
            nn.functional.normalize(in_emb.weight.detach().float().cpu(), dim=1),
            ("input_embedding_cosine"),
        )
        note = (
            "the model has no unembedding (an encoder): cosine between the decoder row and the "
            "input embeddings, i.e. the tokens whose embedding the latent writes most like"
        )
        W = nn.functional.normalize(W_dec_MD.float(), dim=1)
    else:
        return {}, {
            "kind": None,
            "skipped": f"no embedding of width {D} to compare the decoder with",
        }
    parts: dict[str, list[Tensor]] = {k: [] for k in ("top_id", "top_val", "bot_id", "bot_val")}
    parts |= {"hist_counts": [], "hist_edges": []}
    for s in range(0, len(W), chunk):
        s_CV = W[s : s + chunk] @ E_VD.T
        C = len(s_CV)
        top = s_CV.topk(n, dim=1)
        bot = s_CV.topk(n, dim=1, largest=False)
        lo, hi = s_CV.aminmax(dim=1)
        width = (hi - lo).clamp_min(1e-12)
        b_CV = ((s_CV - lo[:, None]) * (bins / width)[:, None]).to(torch.int64).clamp_(max=bins - 1)
        b_CV += (torch.arange(C) * bins)[:, None]
        counts = torch.bincount(b_CV.view(-1), minlength=C * bins).view(C, bins)
        edges = lo[:, None] + width[:, None] * torch.linspace(0, 1, bins + 1)[None, :]
        for k, v in (
            ("top_id", top.indices),
            ("top_val", top.values),
            ("bot_id", bot.indices),
            ("bot_val", bot.values),
            ("hist_counts", counts),
            ("hist_edges", edges),
        ):
            parts[k].append(v)
    tensors = {f"logit_{k}": torch.cat(v) for k, v in parts.items()}
    return tensors, {"kind": kind, "note": note, "vocab_size": int(E_VD.shape[0])}


def final_norm_scale(model: nn.Module, out_emb: nn.Module, D: int) -> Tensor | None:
    """The elementwise scale γ [D] of the norm the unembedding reads (LayerNorm, RMSNorm, Gemma's
    1 + w alike; docs/methods.md#feature-records), or None where none is found. The norm is the
    module, run in one forward pass of one token, whose output is the unembedding's input;
    γ = (norm(x) − norm(−x)) / 2s at x = 64 s, s = (1, −1, 1, ...) (LayerNorm's bias cancels), and
    the module must be scale-invariant (norm(2x) = norm(x)) to count as a norm."""
    inputs: list[Tensor] = []
    outputs: list[tuple[nn.Module, Tensor]] = []
    hooks = [out_emb.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))]
    for mod in model.modules():
        if mod is not out_emb and any(
            p.dim() == 1 and p.shape[0] == D for p in mod.parameters(recurse=False)
        ):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, a, o: (
                        outputs.append((m, o.detach())) if isinstance(o, Tensor) else None
                    )
                )
            )
    device = out_emb.weight.device
    token = getattr(model.config, "bos_token_id", None) or 0
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[token]], device=device))
    except Exception:  # a model whose forward needs more than input_ids: no fold
        return None
    finally:
        for h in hooks:
            h.remove()
    if not inputs:
        return None
    norm = next(
        (
            m
            for m, o in reversed(outputs)
            if o.shape == inputs[-1].shape and torch.equal(o, inputs[-1])
        ),
        None,
    )
    if norm is None:
        return None
    sign = torch.ones(D)
    sign[1::2] = -1.0
    x = (64 * sign).to(out_emb.weight.dtype).to(device)  # rms 64: the norm's eps is 1e-9 relative
    with torch.no_grad():
        y, y_neg, y2 = (norm(v[None, None])[0, 0].float().cpu() for v in (x, -x, 2 * x))
    if not torch.allclose(y, y2, rtol=1e-2, atol=1e-3):
        return None
    return (y - y_neg) / (2 * sign)


def neuron_alignment(W_dec_MD: Tensor, n: int) -> dict[str, Tensor]:
    """The `n` input coordinates with the largest |W_dec| entries of each latent, their values
    and their share of the row's L1 norm (SAEDashboard's "neuron alignment")."""
    W = W_dec_MD.float()
    val, idx = W.abs().topk(min(n, W.shape[1]), dim=1)
    signed = W.gather(1, idx)
    return {
        "align_idx": idx,
        "align_val": signed,
        "align_l1": val / W.abs().sum(1, keepdim=True).clamp_min(1e-12),
    }


def token_strings(tokenizer, ids: Tensor) -> dict[int, str]:
    """Display string of every token id in `ids` (negative ids: padding, skipped): the text the
    token adds after a reference token, so word-piece continuations ('##ing' -> 'ing') and
    leading spaces (SentencePiece, WordPiece, BPE alike) show as they do in running text."""
    uniq = [int(i) for i in torch.unique(ids) if int(i) >= 0]
    if tokenizer is None:
        return {}
    ref = (tokenizer("a", add_special_tokens=False)["input_ids"] or [0])[0]
    base = tokenizer.decode([ref])
    out = {}
    for i in uniq:
        both = tokenizer.decode([ref, i])
        out[i] = both[len(base) :] if both.startswith(base) else tokenizer.decode([i])
    return out
