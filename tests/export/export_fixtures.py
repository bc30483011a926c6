"""A tiny GPT-2 whose word-level vocabulary holds a `<script>` token, text that uses it, and a
random TopK SAE recorded as trained on that text (model, hook, data in its cfg.json)."""

from __future__ import annotations

import json
import random

import pytest
import torch

SCRIPT = "<script>alert(1)</script>"
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "&amp;", '"q"', SCRIPT]
WORDS += [f"w{i}" for i in range(20)]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<bos>", "<eos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def script_model(tmp_path_factory) -> str:
    import transformers as tf

    path = tmp_path_factory.mktemp("script_gpt2")
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=len(tok), n_layer=2, n_head=2, n_embd=32, n_positions=64)
    model = tf.GPT2LMHeadModel(cfg)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def script_text(tmp_path_factory) -> str:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("script_text") / "docs.jsonl"
    with open(path, "w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))}) + "\n")
    return str(path)


def make_sae(folder, model: str, text: str, d_sae: int = 48, k: int = 4, seed: int = 0):
    """A random TopK SAE on resid_post.0 of `model`, recorded as trained on `text`."""
    from sae.io import save
    from sae.model.sae import SAE, SAEConfig

    torch.manual_seed(seed)
    s = SAE(SAEConfig(architecture="topk", d_in=32, d_sae=d_sae, k=k))
    with torch.no_grad():
        s.W_enc.normal_()
        s.b_enc.zero_()
    data = {"source": text, "context_size": 16, "eval_every": 5, "part": "train"}
    meta = {
        "model_name": model,
        "hook_name": "resid_post.0",
        "data": data,
        "context_size": 16,
        "tokens_trained": 1000,
    }
    return save(s, folder, metadata=meta)


@pytest.fixture
def script_sae(tmp_path, script_model, script_text):
    return make_sae(tmp_path / "sae", script_model, script_text)


def saedashboard_batch_class():
    """SAEDashboard's own `NeuronpediaDashboardBatch`, which its Neuronpedia runner builds every
    batch from; the test is skipped where `sae-dashboard` is not installed. .ci/run installs it
    with --no-deps: these classes need only numpy, while its declared pins would downgrade
    transformers and numpy under the rest of the suite."""
    try:
        from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch
    except ImportError:
        pytest.skip("sae-dashboard is not installed (pip install --no-deps sae-dashboard)")
    return NeuronpediaDashboardBatch


def load_with_saedashboard(batch: dict) -> None:
    """Build `NeuronpediaDashboardBatch(**batch)` as SAEDashboard does (a key its classes do not
    take is a TypeError) and check that `to_dict()` gives back every value we wrote."""
    loaded = saedashboard_batch_class()(**batch)
    back = loaded.to_dict()
    for key in ("model_id", "layer", "sae_set"):
        assert back[key] == batch[key], key
    assert len(back["features"]) == len(batch["features"])
    for ours, theirs in zip(batch["features"], back["features"], strict=True):
        for key, value in ours.items():
            if key != "activations":
                assert theirs[key] == value, (ours["feature_index"], key)
        assert theirs["activations"] == ours["activations"], ours["feature_index"]


def check_upload_batch(body: dict) -> None:
    """The constraints of Neuronpedia's `POST /api/feature/upload-batch` body, as its request
    schema states them (apps/webapp/app/api/feature/upload-batch/route.tsx in hijohnnylin/
    neuronpedia): modelId and source strings, 1..128 features with unique integer indices in
    [0, 1e7], density in [0, 1], at most 20 top/bottom logits of {token, value}, explanations of
    {text (1..512 chars), methodName, modelName (strings or null)}, and at least one activation
    of 1..1024 tokens with as many values, quantileFraction in [0, 1]."""
    assert isinstance(body["modelId"], str) and isinstance(body["source"], str)
    feats = body["features"]
    assert 1 <= len(feats) <= 128
    assert len({f["index"] for f in feats}) == len(feats)
    for f in feats:
        assert isinstance(f["index"], int) and 0 <= f["index"] <= 10_000_000
        assert 0.0 <= f["density"] <= 1.0
        for side in ("topLogits", "bottomLogits"):
            assert len(f[side]) <= 20
            assert all(
                isinstance(x["token"], str) and isinstance(x["value"], float) for x in f[side]
            )
        for e in f["explanations"]:
            assert isinstance(e["text"], str) and 1 <= len(e["text"]) <= 512
            assert all(e[k] is None or isinstance(e[k], str) for k in ("methodName", "modelName"))
        assert len(f["activations"]) >= 1
        for a in f["activations"]:
            assert 1 <= len(a["tokens"]) <= 1024 and len(a["values"]) == len(a["tokens"])
            assert all(isinstance(t, str) for t in a["tokens"])
            assert 0.0 <= a.get("quantileFraction", 0.0) <= 1.0
