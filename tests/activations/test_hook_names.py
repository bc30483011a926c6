"""TransformerLens hook names (what SAELens folders record) resolve to the Hugging Face modules
whose values TransformerLens computes there, checked by the block identities TransformerLens's
own TransformerBlock/BertBlock define (resid_mid = resid_pre + attn_out, ...)."""

from __future__ import annotations

import pytest
import torch

from sae.activations.capture import ActivationCapture, load_model
from sae.config import ConfigError
from sae.config.schema import ModelConfig

TL = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"]


def _ids(model, T=10, B=2):
    return torch.randint(
        3, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)
    )


def _capture(model, names):
    return ActivationCapture(model, names, early_exit=False)(_ids(model))


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_pre_ln_blocks_satisfy_transformer_lens_identities(family, tiny_models, tmp_path):
    """Pins: for pre-LN families resid_mid = resid_pre + attn_out and resid_post = resid_mid +
    mlp_out (Gemma 2: attn_out/mlp_out after their post-norms, as TL hooks them), and
    resid_pre/resid_post equal our aliases exactly."""
    if family == "gemma2":
        import transformers as tf

        torch.manual_seed(0)
        cfg = tf.Gemma2Config(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        )  # fmt: skip
        model = tf.Gemma2ForCausalLM(cfg).eval()
        with torch.no_grad():  # Gemma's norms start at zero weight (scale 1 + w): make them bite
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0, 0.5)
    else:
        model, _ = load_model(ModelConfig(name=tiny_models[family]))
    names = [f"blocks.1.{h}" for h in TL] + ["resid_pre.1", "resid_post.1"]
    got = _capture(model, names)
    pre, mid, post = (got[f"blocks.1.hook_resid_{k}"] for k in ("pre", "mid", "post"))
    attn, mlp = got["blocks.1.hook_attn_out"], got["blocks.1.hook_mlp_out"]
    _close(mid, pre + attn)
    _close(post, mid + mlp)
    assert torch.equal(pre, got["resid_pre.1"]) and torch.equal(post, got["resid_post.1"])


def test_gpt_neox_parallel_residual(tiny_models):
    """Pins: Pythia-style parallel blocks add attention and MLP to the same input, and have no
    resid_mid (TransformerLens has none there either): asking for it is a one-line error."""
    model, _ = load_model(ModelConfig(name=tiny_models["gpt_neox"]))
    assert model.config.use_parallel_residual
    got = _capture(model, [f"blocks.2.{h}" for h in TL if h != "hook_resid_mid"])
    b = "blocks.2.hook_"
    _close(got[b + "resid_post"], got[b + "resid_pre"] + got[b + "attn_out"] + got[b + "mlp_out"])
    with pytest.raises(ConfigError, match="runs attention and MLP in parallel"):
        ActivationCapture(model, ["blocks.2.hook_resid_mid"])


def test_bert_post_ln_hooks(tiny_models):
    """Pins: in BERT (post-LN) TL's resid_mid/resid_post are the sums before each LayerNorm, so
    resid_mid = resid_pre + attn_out, resid_post = LN1(resid_mid) + mlp_out, and the layer's
    output (our resid_post alias) is hook_normalized_resid_post = LN2(resid_post)."""
    model, _ = load_model(ModelConfig(name=tiny_models["bert"]))
    names = [f"blocks.0.{h}" for h in TL] + ["blocks.0.hook_normalized_resid_post", "resid_post.0"]
    got = _capture(model, names)
    b = "blocks.0.hook_"
    layer = model.encoder.layer[0]
    _close(got[b + "resid_mid"], got[b + "resid_pre"] + got[b + "attn_out"])
    with torch.inference_mode():  # the captured tensors are inference tensors
        ln1 = layer.attention.output.LayerNorm(got[b + "resid_mid"])
        ln2 = layer.output.LayerNorm(got[b + "resid_post"])
    _close(got[b + "resid_post"], ln1 + got[b + "mlp_out"])
    _close(got[b + "normalized_resid_post"], ln2)
    assert torch.equal(got[b + "normalized_resid_post"], got["resid_post.0"])


def test_unsupported_tl_names_and_base_model_paths(tiny_models):
    """Pins: TL names without an equivalent and out-of-range blocks are one-line errors naming
    what is supported; a path relative to the base model (sparsify's 'h.1') resolves to the
    same module as the full path."""
    model, _ = load_model(ModelConfig(name=tiny_models["gpt2"]))
    with pytest.raises(ConfigError, match="has no Hugging Face equivalent here; supported are"):
        ActivationCapture(model, ["blocks.1.attn.hook_z"])
    with pytest.raises(ConfigError, match=r"the model has blocks 0-2"):
        ActivationCapture(model, ["blocks.7.hook_resid_post"])
    got = _capture(model, ["h.1", "transformer.h.1"])
    assert torch.equal(got["h.1"], got["transformer.h.1"])
