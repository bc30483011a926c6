"""The interpret suite's per-latent results in the shapes the exports show them.

`neuronpedia_explanations(row)` turns one row of latents.parquet into the explanation entries of
a feature in Neuronpedia's own upload (`POST /api/feature/upload-batch`: `text`, `methodName`,
`modelName`, the model that wrote it or null when none did), plus our detection `scores`; the
Neuronpedia export writes them into its upload-batch files, since SAEDashboard's batch classes
take no explanations. The dashboard reads the `interp_*` columns from the table directly.
Definitions: docs/methods.md#interpretability-scores.
"""

from __future__ import annotations

import math
from typing import Any

OFFLINE_SCORES = {
    "detection_token_f1": "interp_token_f1",
    "detection_token_auroc": "interp_token_auroc",
    "detection_context_f1": "interp_random_f1",
    "detection_context_auroc": "interp_random_auroc",
    "detection_hard_negatives_f1": "interp_hard_f1",
}
LLM_SCORES = {
    "detection_context_f1": "interp_llm_f1",
    "detection_context_auroc": "interp_llm_auroc",
}


def _scores(row: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for name, column in names.items():
        v = row.get(column)
        if isinstance(v, int | float) and math.isfinite(v):
            out.append({"typeName": name, "value": float(v)})
    return out


def neuronpedia_explanations(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Explanation entries of one latent (empty when the interpret suite has not run on it).
    The offline n-gram explanation has no model behind it (modelName null); an LLM's names the
    model that wrote it, as the interpret suite recorded it (`interp_llm_model`)."""
    out = []
    text = row.get("interp_explanation")
    if isinstance(text, str) and text and row.get("interp_scored", False):
        out.append(
            {
                "text": text[:512],
                "methodName": "ngram_patterns",
                "modelName": None,
                "scores": _scores(row, OFFLINE_SCORES),
            }
        )
    llm = row.get("interp_llm_explanation")
    if isinstance(llm, str) and llm:
        model = row.get("interp_llm_model")
        out.append(
            {
                "text": llm[:512],
                "methodName": "llm_highlighted_contexts",
                "modelName": model if isinstance(model, str) and model else None,
                "scores": _scores(row, LLM_SCORES),
            }
        )
    return out
