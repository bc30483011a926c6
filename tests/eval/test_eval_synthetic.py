"""`sae eval --suite synthetic`: the suite's wiring (metadata -> true dictionary -> matching ->
nulls -> report), on SAEs whose decoder is the true dictionary or a random one. The matching
mathematics itself is tested in tests/test_matching.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import sae_with_decoder

from sae.analysis.matching import expected_null_mmcs
from sae.analysis.synthetic import SyntheticConfig, SyntheticData
from sae.config import ConfigError
from sae.eval import EvalConfig, run_eval
from sae.io import save
from sae.model.sae import SAE

GEN = SyntheticConfig(d_in=32, n_features=64, mean_active=3.0, seed=3)


def _run(tmp_path, saes: dict[str, SAE], suite="synthetic,core"):
    dirs = []
    for name, s in saes.items():
        save(
            s,
            tmp_path / name,
            metadata={"model_name": "synthetic", "synthetic": dataclasses.asdict(GEN)},
        )
        dirs.append(str(tmp_path / name))
    cfg = EvalConfig(dirs, suite=suite, eval_tokens=2000, n_boot=20, out=str(tmp_path / "rep"))
    return json.loads((run_eval(cfg) / "report.json").read_text())


def test_true_dictionary_scores_one_and_random_scores_the_null(tmp_path):
    true_ND = SyntheticData(GEN).dictionary_ND
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    rand = torch.nn.functional.normalize(
        torch.randn(64, 32, generator=torch.Generator().manual_seed(9)), dim=1
    )
    report = _run(
        tmp_path, {"truth": sae_with_decoder(true_ND[perm]), "random": sae_with_decoder(rand)}
    )
    by_name = {e["name"]: e for e in report["saes"]}
    truth = by_name["truth"]["results"]["synthetic"]["metrics"]
    for key in ("mmcs", "mmcs_abs", "reverse_mmcs", "recovery_90", "recovery_99", "hungarian_mcc"):
        assert truth[key]["value"] == pytest.approx(1.0, abs=1e-5), key
    null_signed = expected_null_mmcs(32, 64)[0]
    assert truth["mmcs"]["null"] == pytest.approx(null_signed, abs=0.05)
    random = by_name["random"]["results"]["synthetic"]["metrics"]
    assert random["mmcs"]["value"] == pytest.approx(null_signed, abs=0.07)
    assert random["recovery_90"]["value"] == 0.0
    syn = by_name["truth"]["results"]["synthetic"]
    assert len(syn["max_cos_by_frequency"]) == 64
    assert (
        tmp_path / "rep" / by_name["truth"]["figures"]["synthetic"]["mmcs_per_feature"]
    ).is_file()
    # The core suite runs on held-out generator batches for a synthetic SAE.
    core = by_name["truth"]["results"]["core"]
    assert core["tokens"] == 2000 and by_name["truth"]["activations"]["kind"] == "synthetic"
    assert core["downstream"]["skipped"]
    assert report["frontier"] is not None and report["frontier"]["fidelity_metric"] is None


def test_synthetic_suite_refuses_an_sae_without_synthetic_metadata(tmp_path):
    s = sae_with_decoder(torch.eye(32))
    save(s, tmp_path / "plain")
    np_path = tmp_path / "acts.npy"
    np.save(np_path, np.eye(10, 32, dtype=np.float32))
    cfg = EvalConfig(
        [str(tmp_path / "plain")],
        suite="synthetic",
        activations=str(np_path),
        out=str(tmp_path / "rep"),
    )
    with pytest.raises(ConfigError, match="no 'synthetic' entry") as e:
        run_eval(cfg)
    assert "\n" not in str(e.value) and not (tmp_path / "rep").exists()
