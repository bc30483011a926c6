"""Hook resolution, capture, and early exit on tiny models of each family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

from sae.activations.capture import ActivationCapture, hook_aliases, load_model
from sae.config import ConfigError
from sae.config.schema import ModelConfig


def _model(tiny_models, family):
    return load_model(ModelConfig(name=tiny_models[family]))


def _ids(model, T=12, B=3):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, model.config.vocab_size, (B, T), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_alias_resolves_and_early_exit_equals_full_forward(tiny_models, family):
    """Pins early exit changing the numbers, and aliases pointing at the wrong module."""
    model, _ = _model(tiny_models, family)
    aliases = hook_aliases(model)
    kinds = {k.rsplit(".", 1)[0] for k in aliases}
    assert kinds == {"resid_pre", "resid_post", "mlp_out", "attn_out"}
    ids = _ids(model)
    full = ActivationCapture(model, list(aliases), early_exit=False)(ids)
    for name in aliases:
        alone = ActivationCapture(model, [name])(ids)[name]
        torch.testing.assert_close(alone, full[name], rtol=0, atol=0)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for i in range(model.config.num_hidden_layers - 1):  # the last one may carry a final norm
        torch.testing.assert_close(full[f"resid_post.{i}"], hidden[i + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(full[f"resid_pre.{i}"], hidden[i], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_stops_after_deepest_hook(tiny_models, family):
    """Harvesting layer 0 must not run layers 1 and 2."""
    model, _ = _model(tiny_models, family)
    deeper = hook_aliases(model)["resid_post.2"].module
    ran = []
    handle = dict(model.named_modules())[deeper].register_forward_hook(lambda *a: ran.append(1))
    ActivationCapture(model, ["resid_post.0", "mlp_out.0"])(_ids(model))
    assert ran == []
    ActivationCapture(model, ["resid_post.0"], early_exit=False)(_ids(model))
    assert ran == [1]
    handle.remove()


def test_multi_hook_capture_equals_single_hooks(tiny_models):
    model, _ = _model(tiny_models, "gpt2")
    ids = _ids(model)
    hooks = ["resid_pre.1", "transformer.h.1.mlp", "transformer.h.1.mlp.c_fc:input", "attn_out.2"]
    together = ActivationCapture(model, hooks)(ids)
    for h in hooks:
        torch.testing.assert_close(
            together[h], ActivationCapture(model, [h])(ids)[h], rtol=0, atol=0
        )
    assert together["transformer.h.1.mlp.c_fc:input"].shape == (3, 12, 32)


def test_unknown_hook_lists_valid_ones(tiny_models):
    model, _ = _model(tiny_models, "llama")
    with pytest.raises(
        ConfigError, match=r"unknown hook 'resid_post\.7'.*resid_post\.0-2.*model\.layers\.0"
    ):
        ActivationCapture(model, ["resid_post.7"])
    with pytest.raises(ConfigError, match="unknown hook 'model.layers.0:inside'"):
        ActivationCapture(model, ["model.layers.0:inside"])


def test_missing_model_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="model.name="):
        load_model(ModelConfig(name=str(tmp_path / "nope")))
