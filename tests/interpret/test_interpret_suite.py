"""The `interpret` suite end to end on a tiny GPT-2: report.json scores with intervals, the
per-latent columns in latents.parquet, the recorded window split; one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sae.config import ConfigError
from sae.eval import cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))  # the shared fixtures
from export_fixtures import script_model, script_sae, script_text  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_interpret_suite_writes_scores_split_and_columns(
    tmp_path, script_sae, script_model, script_text
):
    """Pins the suite's outputs: every headline score has a value and an interval over scored
    latents, the recorded explanation and test windows are disjoint, and latents.parquet holds
    one explanation line and the detection scores per latent (NaN only for unscored ones)."""
    out = tmp_path / "rep"
    cli_main([str(script_sae), "--suite", "interpret", "--out", str(out), "--n-boot", "50",
              "--data.source", script_text, "--model-name", script_model])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    res = report["saes"][0]["results"]["interpret"]
    assert res["scored_latents"] > 0
    f1 = res["scores"]["explanation"]["token"]["f1"]
    assert f1["value"] is not None and f1["ci95"][0] <= f1["value"] <= f1["ci95"][1]
    info = json.loads((out / "sae" / "interpret" / "interpret.json").read_text())
    e, t = set(info["split"]["explanation_windows"]), set(info["split"]["test_windows"])
    assert e and t and not e & t
    table = pq.read_table(out / "sae" / "latents.parquet").to_pandas()
    assert len(table) == 48 and table["interp_explanation"].map(type).eq(str).all()
    scored = table[table["interp_scored"]]
    assert len(scored) == res["scored_latents"]
    assert np.isfinite(scored["interp_token_f1"]).all()
    assert np.isfinite(scored["interp_random_latent_token_auroc"]).all()
    assert "interpret" in (out / "report.md").read_text().lower()


def test_interpret_suite_needs_text(tmp_path, script_sae):
    """Pins the one-line error: activations from a file carry no tokens to explain with."""
    x = tmp_path / "x.npy"
    np.save(x, np.eye(64, 32, dtype=np.float32))
    with pytest.raises(ConfigError, match="interpret suite"):
        cli_main([str(script_sae), "--suite", "interpret", "--activations", str(x)])


def test_neuronpedia_explanation_entries():
    """Pins the upload shape (Neuronpedia's upload-batch `text`, `methodName`, `modelName`): a
    scored latent's row gives one offline entry, written by no model (modelName null), with its
    finite detection scores (NaN left out); an unscored row gives none; an LLM explanation adds
    one naming the model the suite recorded (issue 25.6: it was a placeholder string)."""
    from sae.interpret.export_fields import neuronpedia_explanations

    row = {
        "interp_explanation": "[cat] .95 | covers 80% of firings",
        "interp_scored": True,
        "interp_token_f1": 0.9,
        "interp_token_auroc": 0.97,
        "interp_hard_f1": float("nan"),
    }
    (entry,) = neuronpedia_explanations(row)
    assert entry["text"].startswith("[cat]") and entry["modelName"] is None
    assert entry["methodName"] == "ngram_patterns"
    assert [s["typeName"] for s in entry["scores"]] == [
        "detection_token_f1",
        "detection_token_auroc",
    ]
    assert neuronpedia_explanations(row | {"interp_scored": False}) == []
    llm = {"interp_llm_explanation": "cats", "interp_llm_f1": 0.5, "interp_llm_model": "qwen2.5"}
    both = neuronpedia_explanations(row | llm)
    assert both[1]["text"] == "cats" and both[1]["scores"][0]["value"] == 0.5
    assert both[1]["modelName"] == "qwen2.5"


def test_dashboard_index_carries_the_interpret_columns(
    tmp_path, script_sae, script_model, script_text
):
    """Pins the hand-off to the dashboard: after `records,interpret`, the dashboard written from
    that report folder embeds the explanation and detection columns in its sortable index (it
    shows every latents.parquet column)."""
    from sae.export.dashboard import write_dashboard
    from sae.export.view import Records

    report = tmp_path / "report"
    argv = [str(script_sae), "--suite", "records,interpret", "--out", str(report), "--n-boot", "0",
            "--data.source", script_text, "--model-name", script_model]  # fmt: skip
    cli_main(argv)
    rec = Records.open(report / "sae" / "records")
    site = write_dashboard(rec, tmp_path / "site", "sae", rec.info.activations)
    index = Path(site).read_text()  # write_dashboard returns the index page
    assert "interp_explanation" in index and "interp_token_f1" in index


def test_neuronpedia_export_carries_the_explanations(
    tmp_path, script_sae, script_model, script_text
):
    """Pins the hand-off to the Neuronpedia export (issue 14 item 5, issue 25.6): after
    `records,interpret` the batches still load with SAEDashboard's own NeuronpediaDashboardBatch
    (an `explanations` key in them made it raise TypeError) and validate against the packaged
    schema, while every latent the suite explained has its offline explanation, with its
    detection scores, in the Neuronpedia upload-batch files beside them."""
    import json

    import jsonschema
    from export_fixtures import check_upload_batch, load_with_saedashboard

    from sae.export.neuronpedia import schema, write_neuronpedia
    from sae.export.view import Records

    report = tmp_path / "report"
    argv = [str(script_sae), "--suite", "records,interpret", "--out", str(report), "--n-boot", "0",
            "--data.source", script_text, "--model-name", script_model]  # fmt: skip
    cli_main(argv)
    rec = Records.open(report / "sae" / "records")
    out = tmp_path / "np"
    paths = write_neuronpedia(rec, out, "m", "s", 0, rec.info.activations)
    for p in paths:
        jsonschema.validate(json.loads(p.read_text()), schema())
    uploads = sorted(out.glob("explanations-batch-*.json"))
    assert json.loads((out / "sae_export.json").read_text())["explanations"]["files"] == [
        p.name for p in uploads
    ]
    bodies = [json.loads(p.read_text()) for p in uploads]
    for body in bodies:
        check_upload_batch(body)
        assert body["modelId"] == "m" and body["source"] == "0-s"
    feats = {f["index"]: f for body in bodies for f in body["features"]}
    scored = [m for m in range(rec.d_sae) if rec.row(m).get("interp_scored")]
    assert scored, "the fixture SAE should have scored latents"
    explained = [m for m in scored if rec.row(m).get("interp_explanation")]
    assert explained, "some scored latent should carry an explanation"
    for m in explained:
        (entry,) = [e for e in feats[m]["explanations"] if e["methodName"] == "ngram_patterns"]
        assert entry["text"] == rec.row(m)["interp_explanation"][:512]
        assert any(s["typeName"] == "detection_token_f1" for s in entry["scores"])
    for p in paths:
        load_with_saedashboard(json.loads(p.read_text()))
