"""The `descramble` suite: is the dictionary just a rotation of the principal components (Sule,
Spencer & Czaja 2023; docs/methods.md#descramble-suite)? The closed-form descrambler of the layer's
preactivations, the Brockett bound it reaches, the descrambled weights, and its basis against the
SAE decoder (docs/methods.md#alignment).

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite descramble --out reports/ds

Preactivations H (uncentred, bias included; docs/methods.md#descrambler): the output of the MLP
input linear of the block that reads the SAE's hook (resid_post.N -> block N+1,
`sae.eval.layer.reading_block`) when the model runs (`sae.eval.layer.mlp_read`), otherwise the
SAE's input activations themselves. HHᵀ is streamed in fp64 over the scored rows and divided by
their number, so every η is per token. L = DᵀD for the periodic Fourier derivative (the reference
code's operator).

results:
  source: 'mlp_preactivations' | 'activations'; module, block (MLP only); n_h; tokens
  eta: identity (η(I) = tr(L HHᵀ), the neurons as they are), star (the Brockett bound
       Σ μ_k σ_k²), at_P_star (η evaluated at P* = T Uᵀ: equals star), identity_over_star;
       path: the same three under the path operator plus seriation (best signed permutation
       found by spectral seriation + 2-opt, docs/methods.md#seriation; n_h ≤ SERIATION_MAX)
  sigma_sq: leading eigenvalues of HHᵀ/n (uncentred PCA variances), descending
  weights (MLP only): file (descrambled_weights.safetensors in the SAE's report folder: W_desc =
       P* W_in, b_desc = P* b), roughness_identity and roughness_descrambled (tr(L W Wᵀ)/‖W‖²
       for W_in and W_desc: how smoothly the read weights vary across units)
  alignment: basis (what the K directions are, in the SAE's input space), K, weighted_mmcs
       (Σ_k w_k max_j |cos(d_k, u_j)| / Σ w_k, w_k = E[a_k²]‖d_k‖²), mmcs, reverse_mmcs, null
       (E[max of K iid |cos|]), phi (φ_r at r = r_grid, usage-weighted share of decoder directions
       in the top-r span, against the random baseline r/d), or {skipped: why}

The descrambler's basis: P* pairs the k-th uncentred principal direction u_k of H with the k-th
smoothest mode, so its directions are the u_k in order of σ_k (docs/methods.md#descrambler: for an
LM, descrambling reduces to PCA). In the SAE's space they are u_k itself when H is the SAE's input,
and the read direction W_inᵀu_k (the input direction driving principal component k) when H is the
MLP preactivation of a residual-stream SAE [inferred].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sae.activations.capture import ActivationCapture, resolve_device
from sae.analysis.descramble import (
    brockett_bound,
    descrambled_weights,
    descrambler,
    eta,
    seriate,
    smoothness_operator,
)
from sae.analysis.matching import basis_alignment, subspace_capture
from sae.eval import plots
from sae.eval.base import EvalContext, EvalTarget, SuiteResult
from sae.eval.layer import LatentUsage, mlp_read, model_of, usage_key
from sae.eval.stream import rows, window_batches
from sae.fsutil import atomic_save_safetensors

DESCRAMBLE_MAX = 8192
"""largest n_h descrambled (HHᵀ is n_h² fp64; two eighs of n_h³)."""
SERIATION_MAX = 4096
"""largest n_h for the permutation-restricted descrambler (2-opt is O(n_h²) per pass)."""


def check(target: EvalTarget) -> None:
    """Nothing beyond the runner's checks: the activations, or the model's MLP, always exist."""


def _stream(target: EvalTarget, ctx: EvalContext, mlp) -> tuple[torch.Tensor, LatentUsage]:
    """(HHᵀ/n in fp64, latent usage) in one pass; usage is reused if another suite streamed it."""
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    memo = ctx.memo.get(usage_key(target, ctx))
    hht, n = None, 0
    sum_sq = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
    fired = torch.zeros_like(sum_sq)

    def add(h_NH: torch.Tensor, x_ND: torch.Tensor | None) -> None:
        nonlocal hht, n
        h = h_NH.double()
        hht = h.T @ h if hht is None else hht.add_(h.T @ h)
        n += len(h)
        if x_ND is not None:
            a = sae.encode(x_ND).double()
            sum_sq.add_(a.pow(2).sum(0))
            fired.add_((a != 0).sum(0))

    with torch.no_grad():
        if mlp is None:
            for b in rows(target, ctx.eval_tokens):
                x = b.x_ND.to(device)
                add(x, None if memo else x)
        else:
            src = target.source
            hook = target.source_hooks[0]
            capture = ActivationCapture(src.capture.model, [hook, mlp.module])
            for wb in window_batches(src, ctx.eval_tokens, ctx.batch_windows, target.windows_read):
                acts = capture(wb.ids_BT)
                keep = wb.keep_BT.to(acts[hook].device)
                x = acts[hook][keep].float().to(device)
                add(acts[mlp.module][keep].to(device), None if memo else x)
    assert hht is not None and n > 0, "no rows were scored"
    usage = memo or LatentUsage((sum_sq / n).cpu(), fired.cpu(), n)
    ctx.memo.setdefault(usage_key(target, ctx), usage)
    return (hht / n).cpu(), usage


def _etas(hht: torch.Tensor, kind: str):
    """(descrambler, {identity, star, at_P_star, identity_over_star}) under operator `kind`."""
    L = smoothness_operator(hht.shape[0], kind)  # type: ignore[arg-type]
    ds = descrambler(hht, L)
    ident = eta(torch.eye(hht.shape[0], dtype=torch.float64), L, hht)
    star = brockett_bound(ds.mu_H, ds.sigma_sq_H)
    return ds, {
        "identity": ident,
        "star": star,
        "at_P_star": eta(ds.P_HH, L, hht),
        "identity_over_star": ident / star if star > 0 else None,
    }


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    model = model_of(target)
    mlp = mlp_read(model, target.hook) if model is not None else None
    n_h = mlp.W_HD.shape[0] if mlp else target.sae.cfg.d_in
    if n_h > DESCRAMBLE_MAX:
        why = f"n_h = {n_h} > {DESCRAMBLE_MAX}: HHᵀ and its eigendecomposition are too large"
        return SuiteResult({"skipped": why}, {}, f"Skipped: {why}.")
    hht, usage = _stream(target, ctx, mlp)
    ds, eta_rec = _etas(hht, "fourier")
    eta_rec["path"] = _etas(hht, "path")[1]
    if n_h <= SERIATION_MAX:
        eta_rec["path"]["seriation"] = seriate(hht).eta
    results: dict[str, Any] = {
        "source": "mlp_preactivations" if mlp else "activations",
        "module": mlp.module if mlp else None,
        "block": mlp.block if mlp else None,
        "n_h": n_h,
        "tokens": usage.n,
        "operator": "fourier",
        "eta": eta_rec,
        "sigma_sq": ds.sigma_sq_H[:100].tolist(),
    }
    if mlp is not None:
        w = descrambled_weights(ds.P_HH, mlp.W_HD, mlp.b_H)
        path_w = ctx.figure_path(target, "descrambled_weights").with_suffix(".safetensors")
        tensors = {"W_desc": w.W_HD.float()} | (
            {"b_desc": w.b_H.float()} if w.b_H is not None else {}
        )
        atomic_save_safetensors(path_w, tensors, {"module": mlp.module})
        # roughness of the read weights across units, tr(L W Wᵀ)/‖W‖²: the weight analogue of η
        L = smoothness_operator(n_h, "fourier")
        W0, sq = mlp.W_HD.double(), float(mlp.W_HD.double().pow(2).sum())
        results["weights"] = {
            "file": str(path_w.relative_to(ctx.out)),
            "roughness_identity": float(((L @ W0) * W0).sum()) / sq,
            "roughness_descrambled": float(((L @ w.W_HD) * w.W_HD).sum()) / sq,
        }
    results["alignment"] = _alignment(target, ds.U_HH, mlp, usage)
    figs = {}
    al = results["alignment"]
    if "phi" in al:
        figs["subspace_capture"] = ctx.figure_path(target, "subspace_capture")
        plots.subspace_capture(
            figs["subspace_capture"], al["phi"]["r"], {"descrambler basis": al["phi"]["phi_r"]},
            target.sae.cfg.d_in, target.name,
        )  # fmt: skip
    rel = {k: str(p.relative_to(ctx.out)) for k, p in figs.items()}
    return SuiteResult(results, rel, _markdown(results, rel))


def _alignment(target: EvalTarget, U_HH: torch.Tensor, mlp, usage: LatentUsage) -> dict[str, Any]:
    W_dec = target.sae.W_dec.detach().double().cpu()
    d = W_dec.shape[1]
    if mlp is None or d == U_HH.shape[0]:
        basis_KD = U_HH.T  # principal directions of H live in the SAE's input space
        what = "principal directions of H" + (" (the SAE's input)" if mlp is None else "")
    elif d == mlp.W_HD.shape[1]:
        k = min(U_HH.shape[1], d)
        basis_KD = U_HH[:, :k].T @ mlp.W_HD.double()  # W_inᵀ u_k as rows
        what = "read directions W_inᵀu_k of the preactivation principal directions"
    else:
        return {"skipped": f"SAE width {d} matches neither n_h nor the MLP input width"}
    basis_KD = basis_KD[: min(len(basis_KD), d)]
    live = ~usage.dead_M
    W, w = W_dec[live], usage.mean_sq_M[live]
    if len(W) == 0:
        return {"skipped": "every latent is dead on the scored rows"}
    al = basis_alignment(W, basis_KD, w)
    cap = subspace_capture(W, basis_KD, w)
    r = np.unique(np.round(np.geomspace(1, len(basis_KD), 40)).astype(int))
    return {
        "basis": what,
        "K": len(basis_KD),
        "weighted_mmcs": al.weighted_mmcs,
        "mmcs": al.mmcs,
        "reverse_mmcs": al.reverse_mmcs,
        "null": al.null,
        "phi": {
            "r": r.tolist(),
            "phi_r": cap.phi_R[r - 1].tolist(),
            "baseline": cap.baseline_R[r - 1].tolist(),
        },
    }


def _markdown(r: dict, figs: dict[str, str]) -> str:
    e = r["eta"]
    src = (
        f"MLP preactivations `{r['module']}` (block {r['block']}, the block that reads the hook)"
        if r["module"]
        else "the SAE's input activations"
    )
    lines = [
        f"Descrambler of {src} (n_h = {r['n_h']}, {r['tokens']:,} tokens, Fourier operator); "
        "η per token.",
        "",
        "| operator | η(identity) | η* (Brockett bound) | η(P*) | η(seriation) |",
        "|---|---|---|---|---|",
        f"| fourier | {e['identity']:.4g} | {e['star']:.4g} | {e['at_P_star']:.4g} | |",
        f"| path | {e['path']['identity']:.4g} | {e['path']['star']:.4g} | "
        f"{e['path']['at_P_star']:.4g} | {e['path'].get('seriation', float('nan')):.4g} |",
    ]
    if "weights" in r:
        lines += [
            "",
            f"Descrambled weights: `{r['weights']['file']}`; roughness across units "
            f"tr(L W Wᵀ)/‖W‖² {r['weights']['roughness_identity']:.4g} as the neurons are, "
            f"{r['weights']['roughness_descrambled']:.4g} descrambled.",
        ]
    al = r["alignment"]
    if "skipped" in al:
        lines += ["", f"Alignment skipped: {al['skipped']}."]
    else:
        phi = dict(zip(al["phi"]["r"], al["phi"]["phi_r"], strict=True))
        picks = [k for k in al["phi"]["r"] if k in (1, 10, 100) or k == al["K"]]
        lines += [
            "",
            f"Alignment with the SAE decoder ({al['basis']}, K = {al['K']}): usage-weighted MMCS "
            f"{al['weighted_mmcs']:.3f} (random null {al['null']:.3f}), unweighted "
            f"{al['mmcs']:.3f}, reverse {al['reverse_mmcs']:.3f}; φ_r "
            + ", ".join(f"r={k}: {phi[k]:.3f}" for k in picks)
            + " (random subspace: r/d).",
        ]
    lines += ["", *(f"![{k}]({p})" for k, p in figs.items())]
    return "\n".join(lines)
