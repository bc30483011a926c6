"""The `synthetic` suite: how well the SAE's decoder recovers the true dictionary of the synthetic
data it was trained on (Sharkey, Braun & Millidge 2022; docs/methods.md#synthetic-suite), each
number beside its random-dictionary null (docs/methods.md#random-dictionary-nulls).

    sae train configs/synthetic.yaml && sae eval checkpoints/synthetic/final/* --suite synthetic,core

The SAE's cfg.json metadata must hold `"synthetic": {SyntheticConfig fields}`; the true
dictionary is regenerated from it (`SyntheticData(cfg).dictionary_ND`, deterministic in its seed).
Learned features are the rows of W_dec. The null of MMCS is the mean over 3 random unit
dictionaries of the same size (and the exact expectation beside it); the nulls of recovery and
of the Hungarian MCC come from one random dictionary of the same size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sae.analysis.matching import (
    compare_dictionaries,
    expected_null_mmcs,
    hungarian_mcc,
    random_null,
)
from sae.analysis.synthetic import SyntheticConfig, SyntheticData
from sae.config import ConfigError
from sae.eval import plots
from sae.eval.base import EvalContext, EvalTarget, SuiteResult, finite
from sae.eval.table import TABLE_FILE, update_latents_table


def synthetic_config(target: EvalTarget) -> SyntheticConfig:
    """The generator config recorded with the SAE; ConfigError when absent or invalid."""
    meta = target.meta.get("synthetic")
    if not isinstance(meta, dict):
        raise ConfigError(
            f"suite 'synthetic' needs an SAE trained on synthetic data, but {str(target.folder)!r} "
            "has no 'synthetic' entry in its cfg.json metadata."
        )
    try:
        return SyntheticConfig(**meta)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"the 'synthetic' metadata of {str(target.folder)!r} is not a valid SyntheticConfig ({e})."
        ) from None


def check(target: EvalTarget) -> None:
    cfg = synthetic_config(target)
    if target.sae.cfg.d_out is not None:
        raise ConfigError(
            f"suite 'synthetic' scores autoencoders; {str(target.folder)!r} is a transcoder."
        )
    if cfg.d_in != target.sae.cfg.d_in:
        raise ConfigError(
            f"{str(target.folder)!r} has d_in={target.sae.cfg.d_in} but its synthetic data has "
            f"d_in={cfg.d_in}."
        )


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    cfg = synthetic_config(target)
    data = target.source if isinstance(target.source, SyntheticData) else SyntheticData(cfg)
    true_ND = data.dictionary_ND
    learned_MD = target.sae.W_dec.detach().float().cpu()
    m = learned_MD.shape[0]
    match = compare_dictionaries(true_ND, learned_MD)
    hung = hungarian_mcc(true_ND, learned_MD)
    null = random_null(true_ND, m, repeats=3, seed=ctx.seed)
    exact_signed, exact_abs = expected_null_mmcs(cfg.d_in, m)
    g = torch.Generator().manual_seed(ctx.seed + 1)
    rand_MD = torch.randn(m, cfg.d_in, generator=g)
    rand_match = compare_dictionaries(true_ND, rand_MD)
    rand_hung = hungarian_mcc(true_ND, rand_MD)

    def pair(value: float, null_value: float) -> dict[str, Any]:
        return {"value": finite(value), "null": finite(null_value)}

    metrics = {
        "mmcs": pair(match.mmcs, null.mmcs),
        "mmcs_abs": pair(match.mmcs_abs, null.mmcs_abs),
        "reverse_mmcs": pair(match.reverse_mmcs, null.reverse_mmcs),
        "reverse_mmcs_abs": pair(match.reverse_mmcs_abs, null.reverse_mmcs_abs),
        "recovery_90": pair(match.recovery_90, rand_match.recovery_90),
        "recovery_99": pair(match.recovery_99, rand_match.recovery_99),
        "hungarian_mcc": pair(hung.mcc, rand_hung.mcc),
    }
    _write_best_match(ctx.out / target.name / TABLE_FILE, true_ND, learned_MD)
    probs_N = data.probs_N.numpy()
    max_cos_N = match.max_cos_N.double().numpy()
    fig = ctx.figure_path(target, "mmcs_per_feature")
    plots.mmcs(fig, max_cos_N, probs_N, null.mmcs, target.name)
    order = np.argsort(-probs_N, kind="stable")
    results = {
        "generator": {k: v for k, v in vars(cfg).items()},
        "n_true_features": int(true_ND.shape[0]),
        "n_learned_features": int(m),
        "metrics": metrics,
        "null": {
            "mmcs_repeats": null.repeats,
            "mmcs_std": finite(null.mmcs_std),
            "mmcs_exact": exact_signed,
            "mmcs_abs_exact": exact_abs,
            "hungarian_exact": hung.exact,
        },
        "max_cos_by_frequency": [round(float(v), 5) for v in max_cos_N[order]],
        "definitions": "MMCS = mean over true features of the best signed cosine with a learned "
        "feature (reverse: learned -> true); recovery_X = fraction of true features "
        "whose best cosine exceeds X; hungarian_mcc = mean matched signed cosine of "
        "a one-to-one matching (unmatched true features count 0).",
    }
    rel = {"mmcs_per_feature": str(fig.relative_to(ctx.out))}
    return SuiteResult(results, rel, _markdown(results, rel))


def _write_best_match(path, true_ND: torch.Tensor, learned_MD: torch.Tensor) -> None:
    """Per latent: the true feature its decoder row is closest to (signed cosine) and that cosine."""
    t = torch.nn.functional.normalize(true_ND.double(), dim=1)
    cols: dict[str, list] = {"synthetic_best_match": [], "synthetic_best_cos": []}
    for s in range(0, len(learned_MD), 4096):
        cos_CN = torch.nn.functional.normalize(learned_MD[s : s + 4096].double(), dim=1) @ t.T
        best = cos_CN.max(1)
        cols["synthetic_best_match"] += best.indices.tolist()
        cols["synthetic_best_cos"] += best.values.tolist()
    update_latents_table(path, cols, "synthetic", len(learned_MD))


def _markdown(r: dict, figs: dict[str, str]) -> str:
    lines = [
        f"{r['n_true_features']} true features, {r['n_learned_features']} learned.",
        "",
        "| metric | value | random-dictionary null |",
        "|---|---|---|",
    ]
    for name, p in r["metrics"].items():
        v = "n/a" if p["value"] is None else f"{p['value']:.4f}"
        n = "n/a" if p["null"] is None else f"{p['null']:.4f}"
        lines.append(f"| {name} | {v} | {n} |")
    lines += ["", *(f"![{k}]({p})" for k, p in figs.items())]
    return "\n".join(lines)
