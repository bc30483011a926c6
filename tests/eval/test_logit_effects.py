"""Logit effects of the feature records (docs/methods.md#feature-records) on decoders: the
direct path into the logits goes through the final norm's scale, found on any HF decoder."""

from __future__ import annotations

import pytest
import torch

from sae.activations.capture import load_model
from sae.config.schema import ModelConfig
from sae.eval.finalize import logit_effects


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    ("family", "norm"), [("llama", "model.norm"), ("gpt2", "transformer.ln_f")]
)
def test_logit_effects_fold_the_final_norm_scale(tiny_models, family, norm):
    """Issue 32.3 (SmolLM2, whose final RMSNorm scale runs from -2.1 to 3.3): the logit effects
    were W_dec · W_U with the final norm ignored, so a dimension the norm scales by -2 counted
    with the wrong sign. Known answer: with a random final-norm scale γ (negative entries
    included), the top/bottom effects are those of (W_dec ⊙ γ) · W_U, the unembedding being
    the model's own output embeddings (Llama's RMSNorm, GPT-2's LayerNorm alike)."""
    model, _ = load_model(ModelConfig(name=tiny_models[family], dtype="float32"))
    g = torch.Generator().manual_seed(0)
    gamma = torch.randn(32, generator=g) * 2
    with torch.no_grad():
        model.get_submodule(norm).weight.copy_(gamma)
    W_dec = torch.randn(6, 32, generator=g)
    got, info = logit_effects(W_dec, model, n=5, bins=8)
    want = (W_dec * gamma) @ model.get_output_embeddings().weight.detach().T
    assert info["kind"] == "unembedding" and "γ" in info["note"]
    torch.testing.assert_close(got["logit_top_val"], want.topk(5, dim=1).values)
    torch.testing.assert_close(got["logit_bot_id"], want.topk(5, dim=1, largest=False).indices)
