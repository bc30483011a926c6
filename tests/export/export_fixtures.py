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
