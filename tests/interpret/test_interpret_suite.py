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


def test_interpret_suite_writes_scores_split_and_columns(tmp_path, script_sae):
    """Pins the suite's outputs: every headline score has a value and an interval over scored
    latents, the recorded explanation and test windows are disjoint, and latents.parquet holds
    one explanation line and the detection scores per latent (NaN only for unscored ones)."""
    out = tmp_path / "rep"
    cli_main([str(script_sae), "--suite", "interpret", "--out", str(out), "--n-boot", "50"])
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
    """Pins the export shape: a scored latent's row gives one offline entry with its finite
    detection scores (NaN left out); an unscored row gives none; an LLM explanation adds one."""
    from sae.interpret.export_fields import neuronpedia_explanations

    row = {
        "interp_explanation": "[cat] .95 | covers 80% of firings",
        "interp_scored": True,
        "interp_token_f1": 0.9,
        "interp_token_auroc": 0.97,
        "interp_hard_f1": float("nan"),
    }
    (entry,) = neuronpedia_explanations(row)
    assert entry["description"].startswith("[cat]")
    assert [s["typeName"] for s in entry["scores"]] == [
        "detection_token_f1",
        "detection_token_auroc",
    ]
    assert neuronpedia_explanations(row | {"interp_scored": False}) == []
    both = neuronpedia_explanations(row | {"interp_llm_explanation": "cats", "interp_llm_f1": 0.5})
    assert both[1]["description"] == "cats" and both[1]["scores"][0]["value"] == 0.5


def test_dashboard_index_carries_the_interpret_columns(tmp_path, script_sae):
    """Pins the hand-off to the dashboard: after `records,interpret`, the dashboard written from
    that report folder embeds the explanation and detection columns in its sortable index (it
    shows every latents.parquet column)."""
    from sae.export.dashboard import write_dashboard
    from sae.export.view import Records

    report = tmp_path / "report"
    argv = [str(script_sae), "--suite", "records,interpret", "--out", str(report), "--n-boot", "0"]
    cli_main(argv)
    rec = Records.open(report / "sae" / "records")
    site = write_dashboard(rec, tmp_path / "site", "sae", rec.info["activations"])
    index = Path(site).read_text()  # write_dashboard returns the index page
    assert "interp_explanation" in index and "interp_token_f1" in index


def test_neuronpedia_export_carries_the_explanations(tmp_path, script_sae):
    """Pins the hand-off to the Neuronpedia export (issue 14 item 5): after `records,interpret`,
    every latent the suite scored has its offline explanation under `explanations`, with its
    detection scores, and the batch still validates against the packaged schema."""
    import json

    import jsonschema

    from sae.export.neuronpedia import schema, write_neuronpedia
    from sae.export.view import Records

    report = tmp_path / "report"
    argv = [str(script_sae), "--suite", "records,interpret", "--out", str(report), "--n-boot", "0"]
    cli_main(argv)
    rec = Records.open(report / "sae" / "records")
    paths = write_neuronpedia(rec, tmp_path / "np", "m", "s", 0, rec.info["activations"])
    feats = [f for p in paths for f in json.loads(p.read_text())["features"]]
    for p in paths:
        jsonschema.validate(json.loads(p.read_text()), schema())
    scored = [m for m in range(rec.d_sae) if rec.row(m).get("interp_scored")]
    assert scored, "the fixture SAE should have scored latents"
    explained = [m for m in scored if rec.row(m).get("interp_explanation")]
    assert explained, "some scored latent should carry an explanation"
    for m in explained:
        (entry,) = [e for e in feats[m]["explanations"] if e["typeName"] == "ngram_patterns"]
        assert entry["description"] == rec.row(m)["interp_explanation"]
        assert any(s["typeName"] == "detection_token_f1" for s in entry["scores"])
