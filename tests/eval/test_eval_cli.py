"""`sae eval` end to end through `sae.eval.cli_main`: the report files, the provenance recorded
with the numbers, and bad input refused in one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sae.config import ConfigError
from sae.eval import cli_main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sae(folder: Path, d_in: int, **metadata) -> str:
    torch.manual_seed(0)
    save(SAE(SAEConfig(architecture="topk", d_in=d_in, d_sae=64, k=4)), folder, metadata=metadata)
    return str(folder)


def test_cli_writes_report_json_markdown_and_plots(tiny_models, text_file, tmp_path):
    sae_dir = _sae(
        tmp_path / "gpt2-sae",
        32,
        model_name=tiny_models["gpt2"],
        hook_name="resid_post.1",
        context_size=16,
        tokens_trained=123,
    )
    out = cli_main(
        [
            sae_dir,
            "--suite",
            "core",
            "--data.source",
            text_file,
            "--model-name",
            tiny_models["gpt2"],
            "--eval-tokens",
            "200",
            "--n-boot",
            "30",
            "--out",
            str(tmp_path / "rep"),
        ]
    )
    rep = Path(out)
    assert rep == tmp_path / "rep"
    report = json.loads((rep / "report.json").read_text())
    entry = report["saes"][0]
    assert report["schema_version"] == 1 and report["config"]["data_fields"] == ["source"]
    assert entry["model"] == tiny_models["gpt2"] and entry["hook"] == "resid_post.1"
    assert entry["tokens_trained"] == 123
    act = entry["activations"]
    assert act["kind"] == "live" and act["held_out"] and act["data"]["source"] == text_file
    assert act["data"]["context_size"] == 16 and "command line" in act["data_origin"]
    core = entry["results"]["core"]
    fvu = core["reconstruction"]["fvu"]
    assert fvu["over"] == "tokens" and fvu["n"] == core["tokens"] >= 200
    assert fvu["ci95"][0] <= fvu["value"] <= fvu["ci95"][1]
    for fig in entry["figures"]["core"].values():
        assert (rep / fig).is_file() and (rep / fig).suffix == ".png"
    md = (rep / "report.md").read_text()
    assert "| fvu |" in md and "ce_recovered" in md and "density.png" in md


def _bad_cases(tmp_path: Path, tiny_models) -> dict[str, tuple[list[str], str]]:
    ok = _sae(tmp_path / "ok", 8)
    np.save(tmp_path / "w16.npy", np.eye(50, 16, dtype=np.float32))
    np.save(tmp_path / "w8.npy", np.eye(50, 8, dtype=np.float32))
    out = ["--out", str(tmp_path / "rep")]
    return {
        "missing folder": ([str(tmp_path / "nope"), *out], "does not exist"),
        "not an SAE": ([str(tmp_path), *out], "holds several SAEs"),
        "unknown suite": ([ok, "--suite", "core,bogus", *out], "valid suites are core, synthetic"),
        "width": ([ok, "--activations", str(tmp_path / "w16.npy"), *out], "d_in=8"),
        "synthetic": (
            [ok, "--suite", "synthetic", "--activations", str(tmp_path / "w8.npy"), *out],
            "no 'synthetic' entry",
        ),
        "no model": ([ok, *out], "records no model_name"),
        "matrix-trained": (
            [_sae(tmp_path / "m", 8, model_name="builtin", hook_name="activations"), *out],
            "trained on a plain activation matrix",
        ),
        "bad hook": (
            [
                _sae(tmp_path / "h", 32, model_name=tiny_models["gpt2"], hook_name="resid_post.9"),
                "--model-name",
                tiny_models["gpt2"],
                *out,
            ],
            "unknown hook 'resid_post.9'",
        ),
        "eval tokens": ([ok, "--eval-tokens", "0", *out], "eval_tokens=0"),
        "data field": ([ok, "--data.context-size", "1", *out], "data.context_size=1"),
    }


def test_bad_input_is_refused_in_one_line_before_any_work(tiny_models, tmp_path):
    for case, (argv, message) in _bad_cases(tmp_path, tiny_models).items():
        with pytest.raises(ConfigError) as e:
            cli_main(argv)
        text = str(e.value)
        assert message in text, (case, text)
        assert "\n" not in text, case
        assert not (tmp_path / "rep").exists(), case
