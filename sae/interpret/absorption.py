"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption";
the SAEBench definitions, Karvonen et al. 2025): docs/methods.md#interpretability-scores.

Words: the whole-word alphabetic tokens of the model's own vocabulary (`whole_words`), split
into train and test words. On the activations at the SAE's hook:
1. a linear probe per letter (logistic regression, one letter against the rest, train words);
2. k-sparse probing per letter: latents ranked by the difference of their mean activation on the
   letter's train words and on the others (Gurnee et al. 2023's mean-difference ranking, in place
   of SAEBench's L1-penalised probe), a logistic regression on the top k for k = 1..K_MAX, F1 on
   test words; the letter's main latents are the top k for the last k whose F1 rose by more than
   F1_JUMP over the best before it; number of split features = that k − 1; only latents whose
   mean-activation difference is positive are ranked (none: the letter is not scored);
3. per test word of the letter that the probe detects: absorption fraction and full absorption
   exactly as SAEBench defines them (thresholds below), from the probe projection of the input
   and of each latent's write, a_i · (W_dec_i · p) with p the unit probe direction (the decoder
   row's norm counts: ReLU and imported SAEs need not have unit rows); the cosine thresholds
   read cos(W_dec_i, p).
Letters whose probe F1 on test words is below MIN_PROBE_F1, or with fewer than MIN_WORDS probe
detections, are not scored.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

LETTERS = string.ascii_lowercase
K_MAX = 10
F1_JUMP = 0.03
MIN_PROBE_F1 = 0.6
MIN_WORDS = 5
FULL_COS = 0.025
"""full absorption: the top-projecting latent's cosine with the probe is at least this."""
FRACTION_COS = 0.1
"""absorption fraction: candidate absorbing latents have at least this cosine with the probe."""
PROJ_SHARE = 0.4
"""absorbing latents must carry at least this share of the input's probe projection."""
MAX_ABSORBERS = 3
EPS = 1e-8


def whole_words(tokenizer, min_len: int = 2) -> tuple[list[int], list[str]]:
    """(token ids, words) of the vocabulary's whole-word alphabetic tokens: WordPiece tokens
    without the '##' continuation mark (BERT), tokens with the word-start mark 'Ġ' or '▁'
    (GPT-2 byte-level BPE, SentencePiece), or plain alphabetic tokens of a word-level vocab."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    toks = list(vocab)
    marks = [m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in toks) > len(toks) // 10]
    ids, words = [], []
    for tok, i in vocab.items():
        if i in special or tok.startswith("##"):
            continue
        word = tok
        if marks:
            if not tok.startswith(marks[0]):
                continue
            word = tok[len(marks[0]) :]
        if len(word) >= min_len and word.isascii() and word.isalpha():
            ids.append(i)
            words.append(word)
    order = np.argsort(ids)
    return [ids[j] for j in order], [words[j] for j in order]


def support(words: list[str], train_W: np.ndarray) -> list[str]:
    """Letters with at least MIN_WORDS words on each side of the split."""
    first = np.array([LETTERS.find(w[0].lower()) for w in words])
    return [
        L
        for i, L in enumerate(LETTERS)
        if ((first == i) & train_W).sum() >= MIN_WORDS
        and ((first == i) & ~train_W).sum() >= MIN_WORDS
    ]


def _lr(x, y) -> LogisticRegression:
    return LogisticRegression(max_iter=500, class_weight="balanced").fit(x, y)


def absorption_scores(
    x_WD: np.ndarray, a_WM: np.ndarray, W_dec_MD: np.ndarray, words: list[str], train_W: np.ndarray
) -> dict[str, Any]:
    """Per letter: probe F1, main latents, split features, mean absorption fraction, full
    absorption rate; and their means over scored letters."""
    first = np.array([LETTERS.find(w[0].lower()) for w in words])
    test_W = ~train_W
    dec_MD = W_dec_MD / np.maximum(np.linalg.norm(W_dec_MD, axis=1, keepdims=True), EPS)
    per: dict[str, dict[str, Any]] = {}
    for L in support(words, train_W):
        y_W = first == LETTERS.index(L)
        probe = _lr(x_WD[train_W], y_W[train_W])
        probe_f1 = float(f1_score(y_W[test_W], probe.predict(x_WD[test_W])))
        row: dict[str, Any] = {"probe_f1": probe_f1, "test_words": int((y_W & test_W).sum())}
        per[L] = row
        if probe_f1 < MIN_PROBE_F1:
            row["skipped"] = f"probe F1 {probe_f1:.2f} < {MIN_PROBE_F1}"
            continue
        diff_M = a_WM[train_W & y_W].mean(0) - a_WM[train_W & ~y_W].mean(0)
        ranked = np.argsort(-diff_M, kind="stable")[:K_MAX]
        ranked = ranked[diff_M[ranked] > 0]  # a main latent fires more on the letter's words
        if len(ranked) == 0:
            row["skipped"] = "no latent fires more on its train words than on the others"
            continue
        best, main, f1s = -np.inf, ranked[:1], []
        for k in range(1, len(ranked) + 1):
            feats = ranked[:k]
            kp = _lr(a_WM[train_W][:, feats], y_W[train_W])
            f1 = float(f1_score(y_W[test_W], kp.predict(a_WM[test_W][:, feats])))
            f1s.append(f1)
            if f1 > best + F1_JUMP:
                best, main = f1, feats
            else:
                break
        p_D = probe.coef_[0] / np.linalg.norm(probe.coef_[0])
        cos_M, along_M = dec_MD @ p_D, W_dec_MD @ p_D
        detected = np.flatnonzero(test_W & y_W & (probe.decision_function(x_WD) > 0))
        if len(detected) < MIN_WORDS:
            row["skipped"] = f"{len(detected)} test words detected by the probe < {MIN_WORDS}"
            continue
        frac, full = [], []
        for w in detected:
            f, is_full = word_absorption(x_WD[w] @ p_D, a_WM[w] * along_M, a_WM[w], cos_M, main)
            frac.append(f)
            full.append(is_full)
        row |= {
            "main_latents": [int(m) for m in main],
            "split_features": len(main) - 1,
            "k_sparse_f1": f1s,
            "probe_detected": len(detected),
            "absorption_fraction": float(np.mean(frac)),
            "full_absorption_rate": float(np.mean(full)),
        }
    scored = [r for r in per.values() if "skipped" not in r]
    mean = {
        k: float(np.mean([r[k] for r in scored])) if scored else None
        for k in ("absorption_fraction", "full_absorption_rate", "split_features")
    }
    return {"letters": per, "scored_letters": len(scored), "mean": mean}


def word_absorption(
    act_proj: float, proj_M: np.ndarray, a_M: np.ndarray, cos_M: np.ndarray, main: np.ndarray
) -> tuple[float, bool]:
    """(absorption fraction, full absorption) of one word (SAEBench's definitions) from the
    input's probe projection, each latent's write projected on the probe a_k·(d_k·p), its
    activation and its decoder cosine with the probe."""
    main_proj = float(proj_M[main].sum())
    cand = np.ones(len(a_M), bool)
    cand[main] = False
    cand &= (cos_M >= FRACTION_COS) & (proj_M > 0)
    absorbers = float(np.sort(proj_M[cand])[::-1][:MAX_ABSORBERS].sum())
    if act_proj <= 0 or main_proj >= act_proj or absorbers / act_proj < PROJ_SHARE:
        fraction = 0.0
    elif main_proj <= 0:
        fraction = 1.0
    else:
        absorbed = min(absorbers, act_proj - main_proj)
        fraction = float(np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0))
    top = int(np.argmax(proj_M))
    full = bool(
        (a_M[main] < EPS).all()
        and cos_M[top] >= FULL_COS
        and act_proj >= 0
        and proj_M[top] / act_proj >= PROJ_SHARE
    )
    return fraction, full
