"""Feature absorption on a constructed first-letter case with a known answer, and the vocabulary
filter for BERT-style and GPT-style tokenizers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sae.config import ConfigError
from sae.interpret.absorption import absorption_scores, whole_words

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))  # the shared fixtures
from export_fixtures import script_model, script_sae, script_text  # noqa: F401


def constructed(n_words: int = 20, absorbed_a: int = 4):
    """Words of letters a, b, c (n_words each); x = 3·u_letter + v_word with orthonormal letter
    directions u and word directions v. Latents: one main latent per letter (decoder u); letter
    b's main direction is split in two latents (word index mod 4 below 2, or not); one latent per word (decoder
    v); and for the first `absorbed_a` test words of letter a an absorbing latent with decoder
    (3u + v)/√10 that fires instead of a's main latent (absorption by design)."""
    letters = "abc"
    words = [f"{L}w{i}" for L in letters for i in range(n_words)]
    W = len(words)
    train = np.array([i % 2 == 0 for i in range(n_words)] * 3)
    D = 3 + W
    x = np.zeros((W, D))
    for w in range(W):
        x[w, w // n_words] = 3.0
        x[w, 3 + w] = 1.0
    test_a = [w for w in range(n_words) if not train[w]][:absorbed_a]
    dec = [
        np.eye(D)[0],
        np.eye(D)[1],
        np.eye(D)[1],
        np.eye(D)[2],
    ]  # a, b (i mod 4 < 2), b (the rest), c
    dec += [np.eye(D)[3 + w] for w in range(W)]
    dec += [x[w] / np.linalg.norm(x[w]) for w in test_a]
    a = np.zeros((W, len(dec)))
    for w in range(W):
        letter, i = w // n_words, w % n_words
        main = {0: 0, 1: 1 + (i % 4) // 2, 2: 3}[letter]
        if w in test_a:
            a[w, 4 + W + test_a.index(w)] = np.sqrt(10)
        else:
            a[w, main] = 3.0
            a[w, 4 + w] = 1.0
    return x, a, np.stack(dec), words, train, absorbed_a / (n_words // 2)


def test_constructed_absorption_gives_the_designed_fraction():
    """Known answer: 4 of letter a's 10 test words are absorbed (main latent silent, a
    word-specific latent carries the whole letter projection) → absorption fraction 0.4 and
    full-absorption rate 0.4 for a, 0 for b and c; b's direction split over two latents gives
    one split feature, a and c none."""
    x, a, dec, words, train, designed = constructed()
    res = absorption_scores(x, a, dec, words, train)
    L = res["letters"]
    assert res["scored_letters"] == 3
    assert L["a"]["absorption_fraction"] == designed == 0.4
    assert L["a"]["full_absorption_rate"] == 0.4
    for c in "bc":
        assert L[c]["absorption_fraction"] == 0.0 and L[c]["full_absorption_rate"] == 0.0
    assert L["b"]["split_features"] == 1 and sorted(L["b"]["main_latents"]) == [1, 2]
    assert L["a"]["split_features"] == 0 and L["c"]["split_features"] == 0


def test_absorption_reads_the_latents_write_not_its_activation_times_cosine():
    """Issue 24: a latent's probe projection is its write a_k·(d_k·p), the decoder row's norm
    included; a_k·cos(d_k, p) dropped it, wrong for SAEs whose decoder rows are not unit norm
    (ReLU, imported). Known answer: the absorbing latents of the constructed case rescaled to
    decoder norm 4 with activations / 4 write exactly the same vectors, so the result is the
    same 0.4 (with a·cos they carried a quarter of the projection and were not absorbers)."""
    x, a, dec, words, train, designed = constructed()
    absorbers = np.arange(4 + len(words), len(dec))
    dec[absorbers] *= 4.0
    a[:, absorbers] /= 4.0
    L = absorption_scores(x, a, dec, words, train)["letters"]
    assert L["a"]["absorption_fraction"] == designed == 0.4
    assert L["a"]["full_absorption_rate"] == 0.4


def test_whole_words_bert_and_gpt_vocabularies():
    """Pins the vocabulary filter: WordPiece keeps 'hello' but not '##ing', specials or
    digits; byte-level BPE keeps 'Ġhello' as 'hello' but not 'hello' without the word mark."""

    class Tok:
        def __init__(self, vocab, special):
            self.vocab, self.all_special_ids = vocab, special

        def get_vocab(self):
            return self.vocab

    bert = Tok({"[CLS]": 0, "hello": 1, "##ing": 2, "42": 3, "world": 4, "a": 5}, [0])
    assert whole_words(bert) == ([1, 4], ["hello", "world"])
    gpt = {"Ġhello": 0, "hello": 1, "Ġworld": 2, "Ġ42": 3, "<|endoftext|>": 4, "Ġx": 5}
    assert whole_words(Tok(gpt, [4])) == ([0, 2], ["hello", "world"])


def _sae(folder, model: str, d_in: int) -> str:
    import torch

    from sae.io import save
    from sae.model.sae import SAE, SAEConfig

    torch.manual_seed(0)
    s = SAE(SAEConfig(architecture="topk", d_in=d_in, d_sae=64, k=4))
    meta = {"model_name": model, "hook_name": "resid_post.1", "context_size": 16}
    save(s, folder, metadata=meta)
    return str(folder)


@pytest.mark.usefixtures("one_torch_thread")
def test_absorption_suite_on_a_bert_vocabulary(tiny_models, text_file, tmp_path):
    """Pins the suite end to end on a BERT-style (WordPiece) vocabulary: words are sampled from
    MiniLM's vocabulary, split into disjoint train/test halves, and every supported letter gets
    a row (a random-weight model's probe is weak, so rows may say why they were skipped)."""
    from sae.eval import cli_main

    sae_dir = _sae(tmp_path / "bert-sae", tiny_models["bert"], 32)
    out = tmp_path / "rep"
    argv = [sae_dir, "--suite", "absorption", "--data.source", text_file, "--out", str(out)]
    cli_main(argv + ["--model-name", tiny_models["bert"], "--n-boot", "20"])
    res = json.loads((out / "report.json").read_text())["saes"][0]["results"]["absorption"]
    assert res["words"] == 4000 and res["train_words"] + res["test_words"] == 4000
    assert len(res["letters"]) >= 20
    assert all("probe_f1" in r for r in res["letters"].values())


def test_unsupported_vocabulary_is_one_line(tmp_path, script_sae, script_model, script_text):
    """Pins the one-line refusal: a word-level vocabulary of a dozen words cannot support the
    first-letter task, and says so before any work."""
    from sae.eval import cli_main

    with pytest.raises(ConfigError, match="cannot support the first-letter task"):
        cli_main([str(script_sae), "--suite", "absorption", "--out", str(tmp_path / "r"),
                  "--data.source", script_text, "--model-name", script_model])  # fmt: skip


def test_report_says_why_nothing_was_scored():
    """Pins the MiniLM finding: at resid_post.3 no first-letter probe reaches F1 0.6 (median
    0.2), and a table of skipped rows alone read like a failed run; the summary now gives the
    reason and the median probe F1, and says nothing when a letter was scored."""
    from sae.eval.absorption import _unmeasurable

    letters = {"a": {"probe_f1": 0.1}, "b": {"probe_f1": 0.3}, "c": {"probe_f1": 0.2}}
    text = _unmeasurable({"scored_letters": 0, "letters": letters})
    assert "median 0.20" in text and "cannot be measured" in text
    assert _unmeasurable({"scored_letters": 1, "letters": letters}) == ""
