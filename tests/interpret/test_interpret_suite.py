"""The `interpret` suite end to end on a tiny GPT-2: report.json scores with intervals, the
per-latent columns in latents.parquet, the recorded window split; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from sae.config import ConfigError
from sae.eval import cli_main

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
    np.save(x, np.zeros((64, 32), np.float32))
    with pytest.raises(ConfigError, match="interpret suite"):
        cli_main([str(script_sae), "--suite", "interpret", "--activations", str(x)])
