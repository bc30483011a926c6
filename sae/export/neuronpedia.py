"""Neuronpedia batch JSON, in the shape SAEDashboard's Neuronpedia runner writes.

    sae export SAE_DIR --format neuronpedia --out np/ [--np-model-id gpt2-small --np-set res-jb]

OUT/batch-0.json, batch-1.json, ... hold FEATURES_PER_BATCH features each: top level
`model_id`, `layer`, `sae_set`, `features[]`; per feature `feature_index`, `pos_str`/`pos_values`
(top logit tokens; for encoders the nearest input-embedding tokens, see `sae_export.json`),
`neg_str`/`neg_values`, `frac_nonzero`, `freq_hist_data_bar_values/heights` (nonzero
activations), `logits_hist_data_bar_values/heights`, `activations[]` (first the top group with
bin_min −1, bin_max = max activation, bin_contains −1 as SAEDashboard marks it, then one group
per equal-mass bin with its bounds and the fraction of all tokens it holds), each with `tokens`,
`values`, `qualifying_token_index`; correlated neurons/features (`*_pearson`, `*_l1` = cosine, as
SAEDashboard fills it), `neuron_alignment_*`: exactly the keys SAEDashboard's own
`NeuronpediaDashboardBatch(**batch)` takes (the tests load every batch with it), and the schema
(sae/export/neuronpedia.schema.json) allows no other.

Explanations, which SAEDashboard's classes do not take, go where Neuronpedia's own upload takes
them: OUT/explanations-batch-0.json, ... are bodies for `POST /api/feature/upload-batch`
(`modelId`, `source` = "<layer>-<sae_set>", at most 128 `features`, each with `index`, `density`,
`topLogits`/`bottomLogits` (at most 20), `activations` (`tokens`, `values`, and the bin's
`quantileMin`/`quantileMax`/`quantileFraction`) and `explanations` (`text`, `methodName`,
`modelName`: the LLM that wrote it, null for the offline n-gram method; plus our detection
`scores`)); only latents that have an explanation and at least one context are listed. Neuronpedia
accepts only method and model names registered with it. OUT/sae_export.json says what was read
and how.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from sae.export.view import Records
from sae.fsutil import atomic_write_text, claim, remove
from sae.interpret.export_fields import neuronpedia_explanations

FEATURES_PER_BATCH = 128


def safe_json(obj: Any, indent: int | None = None) -> str:
    """JSON whose strings carry no raw <, > or &: safe inside HTML <script> blocks and in any
    viewer that forgets to escape (a token "<script>…" stays data)."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def schema() -> dict:
    return json.loads(resources.files("sae.export").joinpath("neuronpedia.schema.json").read_text())


def _r(xs, nd: int = 4) -> list[float]:
    return [round(float(x), nd) for x in xs]


def feature(rec: Records, m: int, n_windows: int, context_size: int, dataset: str) -> dict:
    row = rec.row(m)
    logits = rec.logits(m) or {"pos": [], "neg": [], "hist_values": [], "hist_heights": []}
    hist = rec.histogram(m)
    acts = []
    top = rec.top_contexts(m)
    if top:
        mx = float(row["max_activation"])
        acts += [_act(c, -1, mx, -1) for c in top]
    for b in rec.bins(m):
        acts += [_act(c, b["bin_min"], b["bin_max"], b["bin_contains"]) for c in b["samples"]]
    neurons, latents = rec.correlated(m, "neuron"), rec.correlated(m, "latent")
    t = rec.t
    return {
        "feature_index": m,
        "neuron_alignment_indices": [int(i) for i in t["align_idx"][m]],
        "neuron_alignment_values": _r(t["align_val"][m]),
        "neuron_alignment_l1": _r(t["align_l1"][m]),
        "correlated_neurons_indices": [i for i, _, _ in neurons],
        "correlated_neurons_pearson": _r(r for _, r, _ in neurons),
        "correlated_neurons_l1": _r(c for _, _, c in neurons),
        "correlated_features_indices": [i for i, _, _ in latents],
        "correlated_features_pearson": _r(r for _, r, _ in latents),
        "correlated_features_l1": _r(c for _, _, c in latents),
        "pos_str": [s for s, _ in logits["pos"]],
        "pos_values": _r(v for _, v in logits["pos"]),
        "neg_str": [s for s, _ in logits["neg"]],
        "neg_values": _r(v for _, v in logits["neg"]),
        "frac_nonzero": float(row["frequency"]),
        "freq_hist_data_bar_values": hist["values"],
        "freq_hist_data_bar_heights": hist["heights"],
        "logits_hist_data_bar_values": logits["hist_values"],
        "logits_hist_data_bar_heights": logits["hist_heights"],
        "n_prompts_total": n_windows,
        "n_tokens_in_prompt": context_size,
        "dataset": dataset,
        "decoder_weights_dist": [],
        "activations": acts,
    }


UPLOAD_MAX_LOGITS = 20
UPLOAD_MAX_TOKENS = 1024
"""limits of Neuronpedia's upload-batch endpoint (top/bottom logits per feature, tokens per
activation context)."""


def upload_feature(rec: Records, m: int) -> dict | None:
    """Latent `m` in Neuronpedia's upload-batch shape, or None when it has no explanation (the
    interpret suite did not run or did not explain it) or no context to show."""
    row = rec.row(m)
    explanations = neuronpedia_explanations(row)
    if not explanations:
        return None
    acts = []
    for c in rec.top_contexts(m):
        acts.append({"tokens": c["tokens"], "values": c["values"]})
    for b in rec.bins(m):
        bounds = {"quantileMin": b["bin_min"], "quantileMax": b["bin_max"]}
        bounds["quantileFraction"] = min(max(float(b["bin_contains"]), 0.0), 1.0)
        acts += [{"tokens": c["tokens"], "values": c["values"]} | bounds for c in b["samples"]]
    acts = [
        a
        | {"tokens": a["tokens"][:UPLOAD_MAX_TOKENS], "values": _r(a["values"][:UPLOAD_MAX_TOKENS])}
        for a in acts
        if a["tokens"]
    ]
    if not acts:
        return None
    logits = rec.logits(m) or {"pos": [], "neg": []}
    return {
        "index": m,
        "density": min(max(float(row["frequency"]), 0.0), 1.0),
        "topLogits": [{"token": t, "value": round(v, 4)} for t, v in logits["pos"][:20]],
        "bottomLogits": [{"token": t, "value": round(v, 4)} for t, v in logits["neg"][:20]],
        "explanations": explanations,
        "activations": acts,
    }


def _act(c: dict, lo: float, hi: float, contains: float) -> dict:
    return {
        "bin_min": round(float(lo), 6),
        "bin_max": round(float(hi), 6),
        "bin_contains": round(float(contains), 8),
        "tokens": c["tokens"],
        "values": c["values"],
        "qualifying_token_index": c["qualifying_token_index"],
    }


def layer_of(hook: str | None) -> int:
    """The block number in a hook name ('resid_post.3' -> 3, 'transformer.h.6.mlp' -> 6), else 0."""
    nums = re.findall(r"\.(\d+)(?:\.|$|:)", hook or "")
    return int(nums[0]) if nums else 0


def write_neuronpedia(
    rec: Records, out: Path, model_id: str, sae_set: str, layer: int, provenance: dict
) -> list[Path]:
    """Every batch file under `out`, plus sae_export.json; returns the batch paths."""
    data = provenance.get("data") or {}
    n_windows = int(provenance.get("windows_read") or 0)
    claim(out, "export")
    paths = []
    for b, s in enumerate(range(0, rec.d_sae, FEATURES_PER_BATCH)):
        feats = [
            feature(
                rec, m, n_windows, int(data.get("context_size", 0)), str(data.get("source", ""))
            )
            for m in range(s, min(s + FEATURES_PER_BATCH, rec.d_sae))
        ]
        batch = {"model_id": model_id, "layer": layer, "sae_set": sae_set, "features": feats}
        path = out / f"batch-{b}.json"
        atomic_write_text(path, safe_json(batch))
        paths.append(path)
    explained = [f for m in range(rec.d_sae) if (f := upload_feature(rec, m)) is not None]
    source = f"{layer}-{sae_set}".lower()
    uploads = []
    for b, s in enumerate(range(0, len(explained), FEATURES_PER_BATCH)):
        body = {"modelId": model_id.lower(), "source": source}
        body["features"] = explained[s : s + FEATURES_PER_BATCH]
        uploads.append(f"explanations-batch-{b}.json")
        atomic_write_text(out / uploads[-1], safe_json(body))
    for stale in out.glob("explanations-batch-*.json"):  # from an earlier export with more
        if re.fullmatch(r"explanations-batch-\d+\.json", stale.name) and stale.name not in uploads:
            remove(stale, "export")
    meta = {
        "format": "neuronpedia batch JSON (SAEDashboard NeuronpediaRunner shape)",
        "features_per_batch": FEATURES_PER_BATCH,
        "n_features": rec.d_sae,
        "tokens": rec.info.tokens,
        "activations": provenance,
        "logit_effects": rec.info.logit_effects,
        "explanations": {
            "files": uploads,
            "format": "Neuronpedia POST /api/feature/upload-batch bodies",
            "n_features": len(explained),
        },
    }
    atomic_write_text(out / "sae_export.json", safe_json(meta, indent=2))
    return paths
