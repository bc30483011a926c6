"""`sae eval` on SAEs other libraries wrote: a SAELens folder naming its hook the TransformerLens
way and a sparsify folder naming it relative to the base model run on the Hugging Face model;
the model loads with the revision/dtype setting the SAE records (remote code only with the flag), and a flag that
contradicts it is a one-line error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from sae.config import ConfigError
from sae.eval import cli_main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _eval(sae_dir, text_file, out: Path, *extra: str, model: str) -> dict:
    argv = [str(sae_dir), "--suite", "core", "--data.source", text_file, "--data.context-size"]
    argv += ["16", "--eval-tokens", "120", "--n-boot", "0", "--out", str(out), *extra]
    argv += ["--model-name", model]
    cli_main(argv)
    return json.loads((out / "report.json").read_text())["saes"][0]


def test_saelens_folder_with_a_transformer_lens_hook_runs_through_eval(
    tiny_models, text_file, tmp_path
):
    """Pins: a folder SAELens itself saved, whose metadata says hook_name='blocks.1.hook_resid_post'
    (a name `sae eval` used to refuse on an HF model), is scored on the HF model at that point."""
    sl = pytest.importorskip("sae_lens")
    warnings.filterwarnings("ignore", module="sae_lens")
    torch.manual_seed(0)
    meta = sl.saes.sae.SAEMetadata(
        model_name=tiny_models["gpt2"], hook_name="blocks.1.hook_resid_post", context_size=16
    )
    theirs = sl.StandardSAE(sl.StandardSAEConfig(d_in=32, d_sae=64, metadata=meta))
    theirs.save_model(str(tmp_path / "saelens"))
    entry = _eval(tmp_path / "saelens", text_file, tmp_path / "rep", model=tiny_models["gpt2"])
    assert entry["hook"] == "blocks.1.hook_resid_post"
    assert entry["activations"]["kind"] == "live"
    core = entry["results"]["core"]
    assert core["tokens"] >= 120 and core["reconstruction"]["fvu"]["value"] > 0


def test_sparsify_hookpoint_runs_through_eval(tiny_models, text_file, tmp_path):
    """Pins: sparsify names hookpoints inside the base model ('layers.1' in a LlamaForCausalLM
    whose module is model.layers.1); the folder loads and is scored at that module."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    (run / "layers.1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": tiny_models["llama"]}))
    (run / "layers.1" / "cfg.json").write_text(json.dumps({"k": 4, "num_latents": 64, "d_in": 32}))
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 32, generator=g) / 32**0.5
    state = {
        "encoder.weight": W,
        "encoder.bias": torch.zeros(64),
        "W_dec": W.clone(),
        "b_dec": torch.zeros(32),
    }
    save_file(state, str(run / "layers.1" / "sae.safetensors"))
    entry = _eval(run / "layers.1", text_file, tmp_path / "rep", model=tiny_models["llama"])
    assert entry["hook"] == "layers.1" and entry["model"] == tiny_models["llama"]
    assert entry["results"]["core"]["tokens"] >= 120


def test_model_loads_as_recorded_and_a_contradicting_flag_is_refused(
    tiny_models, text_file, tmp_path
):
    """Pins: the dtype an SAE's metadata records is the dtype eval loads the model in (it used
    to be float32 always), and `--model-dtype` that contradicts it stops in one line before any
    work; a flag may fill in what the metadata does not record."""
    torch.manual_seed(0)
    gpt2 = tiny_models["gpt2"]
    meta = dict(model_name=gpt2, hook_name="resid_post.1", context_size=16)
    folder = tmp_path / "bf16"
    save(SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4)), folder,
         metadata=meta | {"model_dtype": "bfloat16", "model_revision": None})  # fmt: skip
    entry = _eval(folder, text_file, tmp_path / "rep", model=gpt2)
    assert entry["activations"]["model_load"] == {
        "revision": None, "dtype": "bfloat16", "trust_remote_code": False, "gguf_file": None
    }  # fmt: skip
    with pytest.raises(ConfigError) as e:
        _eval(folder, text_file, tmp_path / "rep2", "--model-dtype", "float32", model=gpt2)
    assert "--model-dtype float32 contradicts the SAE" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "rep2").exists()

    plain = tmp_path / "plain"
    save(SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4)), plain, metadata=meta)
    with pytest.raises(ConfigError, match="model_dtype='float64' is not one of"):
        _eval(plain, text_file, tmp_path / "rep3", "--model-dtype", "float64", model=gpt2)


def test_transformer_lens_model_names_become_hub_names():
    """Pins: SAELens records TransformerLens model names ('gpt2-small'); eval loads the Hub
    model TransformerLens maps it to, and leaves Hub ids, paths and 'builtin' alone."""
    pytest.importorskip("transformer_lens")
    from sae.activations.capture import hub_model_name

    assert hub_model_name("gpt2-small") == "gpt2"
    assert hub_model_name("pythia-70m-deduped") == "EleutherAI/pythia-70m-deduped"
    for name in ("EleutherAI/pythia-70m", "builtin", "no-such-model-anywhere"):
        assert hub_model_name(name) == name


def test_recorded_remote_code_runs_only_with_the_flag(tiny_models, text_file, tmp_path):
    """Pins issue 25.1: an SAE's cfg.json (anyone's, e.g. downloaded from the Hub) recording
    `model_trust_remote_code: true` for a model whose repo carries code used to make `sae eval`
    import and run that code. Now it is one error naming --trust-remote-code and the code never
    runs; an explicit `--trust-remote-code False` loads the model with the library's own code,
    and only `--trust-remote-code True` on the command line runs the repo's code."""
    import shutil

    model = tmp_path / "evil-model"
    shutil.copytree(tiny_models["gpt2"], model)
    marker = tmp_path / "remote-code-ran"
    (model / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import GPT2Config\n\n\n"
        "class EvilConfig(GPT2Config):\n    pass\n"
    )
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(
        json.dumps(cfg | {"auto_map": {"AutoConfig": "evil.EvilConfig"}})
    )
    meta = dict(model_name=str(model), hook_name="resid_post.1", context_size=16)
    folder = tmp_path / "sae"
    save(SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4)), folder,
         metadata=meta | {"model_trust_remote_code": True})  # fmt: skip

    with pytest.raises(ConfigError) as e:
        _eval(folder, text_file, tmp_path / "rep", model=str(model))
    assert "--trust-remote-code True" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists() and not (tmp_path / "rep").exists()

    from sae.export.cli import ExportConfig, run_export  # sae export's records pass: the same

    with pytest.raises(ConfigError, match="--trust-remote-code True"):
        run_export(ExportConfig(str(folder), model_name=str(model), out=str(tmp_path / "site")))
    assert not marker.exists()

    entry = _eval(
        folder, text_file, tmp_path / "rep2", "--trust-remote-code", "False", model=str(model)
    )
    assert entry["activations"]["model_load"]["trust_remote_code"] is False
    assert not marker.exists()

    try:
        _eval(folder, text_file, tmp_path / "rep3", "--trust-remote-code", "True", model=str(model))
    except Exception:
        pass  # whether the repo's code then loads a model is its own business
    assert marker.exists()
