"""Offline explanations: the tokens and short n-grams that carry a latent's activation.

In the spirit of Neuron-to-Graph (Foote et al. 2023, "Neuron to Graph: Interpreting Language
Model Neurons at Scale"): a latent is explained by a small set of patterns, each an n-gram that
ends at the activating token (the token alone, or it with one or two preceding tokens), chosen
from the explanation split of the held-out windows only (`split.py`). A pattern is kept when the
latent fires on at least half of its occurrences there (predicting "fires" on it is then the
majority call); the most general form is preferred (the token alone before its bigrams, a bigram
before its trigrams), so the patterns of one latent never overlap. Definitions:
docs/methods.md#interpretability-scores.

Everything here is pure numpy over a `Corpus` (token ids of the windows read) and sparse firing
`Events`; no model, no [tokens, d_sae] matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

MAX_N = 3
"""longest pattern: the activating token and up to two preceding tokens."""
VOCAB_BITS = 21
"""token ids are packed 21 bits per token into one int64 n-gram key (vocabularies < 2M)."""


class Corpus(NamedTuple):
    """The windows a pass read, flattened: one entry per position."""

    tok_N: np.ndarray
    """token id (int64)."""
    keep_N: np.ndarray
    """scored position (BOS/special tokens excluded as in training)."""
    win_N: np.ndarray
    """global window index."""
    pos_N: np.ndarray
    """position inside its window."""

    def select(self, mask_N: np.ndarray) -> Corpus:
        return Corpus(*(a[mask_N] for a in self))


class Events(NamedTuple):
    """Sparse firings: latent `m_E` fires with activation `a_E` at corpus position `n_E`."""

    n_E: np.ndarray
    m_E: np.ndarray
    a_E: np.ndarray

    def remap(self, mask_N: np.ndarray) -> Events:
        """The events at positions in `mask_N`, renumbered to `Corpus.select(mask_N)`."""
        new_N = np.cumsum(mask_N) - 1
        keep_E = mask_N[self.n_E]
        return Events(new_N[self.n_E[keep_E]], self.m_E[keep_E], self.a_E[keep_E])


def ngram_keys(c: Corpus, n: int) -> np.ndarray:
    """int64 key of the n-gram ending at each position (token ids + 1; 0 before the window)."""
    if int(c.tok_N.max(initial=0)) >= (1 << VOCAB_BITS) - 1:
        raise ValueError(f"token ids must be below {(1 << VOCAB_BITS) - 1} for n-gram keys")
    key_N = c.tok_N.astype(np.int64) + 1
    for back in range(1, n):
        prev_N = np.zeros_like(key_N)
        ok_N = c.pos_N >= back
        idx_N = np.arange(len(key_N)) - back
        prev_N[ok_N] = c.tok_N[idx_N[ok_N]] + 1
        key_N = key_N | (prev_N << (VOCAB_BITS * back))
    return key_N


def key_tokens(key: np.ndarray, n: int) -> np.ndarray:
    """[P, MAX_N] token ids (oldest first, −1 padding) of n-gram keys of length n."""
    out = np.full((len(key), MAX_N), -1, dtype=np.int64)
    mask = (1 << VOCAB_BITS) - 1
    for back in range(n):
        out[:, MAX_N - 1 - back] = ((key >> (VOCAB_BITS * back)) & mask) - 1
    return out


@dataclass(frozen=True)
class ExplainSettings:
    """How patterns are chosen (fixed defaults; recorded in interpret.json)."""

    min_precision: float = 0.5
    """a pattern is kept when the latent fires on at least this share of its occurrences."""
    min_support: int = 3
    """... and on at least this many of them (explanation split)."""
    max_patterns: int = 5
    """patterns kept per latent (by firings covered)."""


class Explanations(NamedTuple):
    """Pattern sets of every latent (rows sorted by latent, then firings covered, descending)."""

    m_P: np.ndarray
    """latent of each pattern."""
    n_P: np.ndarray
    """pattern length (1..MAX_N)."""
    key_P: np.ndarray
    """n-gram key (`ngram_keys`)."""
    tokens_PK: np.ndarray
    """[P, MAX_N] token ids, oldest first, −1 padding; the last is the activating token."""
    fire_P: np.ndarray
    """explanation-split occurrences on which the latent fires."""
    occ_P: np.ndarray
    """explanation-split occurrences."""
    fired_M: np.ndarray
    """explanation-split firings of each latent."""
    tokens: int
    """explanation-split scored tokens."""

    @property
    def precision_P(self) -> np.ndarray:
        return self.fire_P / np.maximum(self.occ_P, 1)

    def coverage(self) -> np.ndarray:
        """[M] share of the latent's explanation-split firings that its patterns cover."""
        cov = np.bincount(self.m_P, self.fire_P, minlength=len(self.fired_M))
        return np.where(self.fired_M > 0, cov / np.maximum(self.fired_M, 1), np.nan)

    def residual_rate(self) -> np.ndarray:
        """[M] firing rate on explanation-split tokens no pattern matches: the score those get."""
        M = len(self.fired_M)
        fire = self.fired_M - np.bincount(self.m_P, self.fire_P, minlength=M)
        occ = self.tokens - np.bincount(self.m_P, self.occ_P, minlength=M)
        return fire / np.maximum(occ, 1)


def _counts(c: Corpus, ev: Events, n: int):
    """(unique keys U, occurrences [U], (latent, key index) pairs with firing counts)."""
    key_N = ngram_keys(c, n)
    uniq_U, inv = np.unique(key_N[c.keep_N], return_inverse=True)
    occ_U = np.bincount(inv, minlength=len(uniq_U))
    id_N = np.full(len(key_N), -1, dtype=np.int64)
    id_N[c.keep_N] = inv
    pair_E = ev.m_E.astype(np.int64) * len(uniq_U) + id_N[ev.n_E]
    pairs, fire = np.unique(pair_E[id_N[ev.n_E] >= 0], return_counts=True)
    return uniq_U, occ_U, pairs // len(uniq_U), pairs % len(uniq_U), fire


def explain(c: Corpus, ev: Events, d_sae: int, s: ExplainSettings | None = None) -> Explanations:
    """Pattern sets of all `d_sae` latents from explanation-split windows `c` and their firings."""
    s = s or ExplainSettings()
    chosen: list[tuple[np.ndarray, ...]] = []
    taken: list[tuple[np.ndarray, np.ndarray]] = []  # per level: (unique keys, chosen pair ids)
    for n in range(1, MAX_N + 1):
        uniq_U, occ_U, m_Q, u_Q, fire_Q = _counts(c, ev, n)
        key_Q = uniq_U[u_Q]
        ok_Q = (fire_Q >= s.min_support) & (fire_Q >= s.min_precision * occ_U[u_Q])
        for shorter, (uniq_S, pairs) in enumerate(taken, start=1):  # a general form chosen
            # the suffix of a scored n-gram ends at the same scored position, so it is in uniq_S
            sub_Q = np.searchsorted(uniq_S, key_Q & ((1 << (VOCAB_BITS * shorter)) - 1))
            ok_Q &= ~np.isin(m_Q * len(uniq_S) + sub_Q, pairs)
        taken.append((uniq_U, m_Q[ok_Q] * len(uniq_U) + u_Q[ok_Q]))
        occ_Q = occ_U[u_Q]
        chosen.append(
            (m_Q[ok_Q], np.full(int(ok_Q.sum()), n), key_Q[ok_Q], fire_Q[ok_Q], occ_Q[ok_Q])
        )
    m_P, n_P, key_P, fire_P, occ_P = (np.concatenate(x) for x in zip(*chosen, strict=True))
    order = np.lexsort((-occ_P, -fire_P, m_P))
    m_P, n_P, key_P, fire_P, occ_P = (a[order] for a in (m_P, n_P, key_P, fire_P, occ_P))
    first = np.searchsorted(m_P, m_P)
    keep = (np.arange(len(m_P)) - first) < s.max_patterns
    m_P, n_P, key_P, fire_P, occ_P = (a[keep] for a in (m_P, n_P, key_P, fire_P, occ_P))
    tokens_PK = np.full((len(m_P), MAX_N), -1, dtype=np.int64)
    for n in range(1, MAX_N + 1):
        tokens_PK[n_P == n] = key_tokens(key_P[n_P == n], n)
    fired_M = np.bincount(ev.m_E, minlength=d_sae)
    return Explanations(m_P, n_P, key_P, tokens_PK, fire_P, occ_P, fired_M, int(c.keep_N.sum()))


def top_token(c: Corpus, ev: Events, d_sae: int) -> Explanations:
    """The baseline explanation: each latent's most frequent firing token, alone."""
    uniq_U, occ_U, m_Q, u_Q, fire_Q = _counts(c, ev, 1)
    order = np.lexsort((-fire_Q, m_Q))
    m_Q, u_Q, fire_Q = m_Q[order], u_Q[order], fire_Q[order]
    first = np.flatnonzero(np.r_[True, m_Q[1:] != m_Q[:-1]])
    m_P, key_P = m_Q[first], uniq_U[u_Q[first]]
    return Explanations(
        m_P,
        np.ones(len(m_P), dtype=np.int64),
        key_P,
        key_tokens(key_P, 1),
        fire_Q[first],
        occ_U[u_Q[first]],
        np.bincount(ev.m_E, minlength=d_sae),
        int(c.keep_N.sum()),
    )


def _show(tokens: list[str]) -> str:
    """Tokens as running text with the activating (last) token in brackets: ' of', ' the' ->
    'of [the]'; a word-piece continuation stays attached: 'play', 'ing' -> 'play[ing]'."""
    t = [x.replace("\n", "↵") for x in tokens]
    core = t[-1].lstrip()
    lead = t[-1][: len(t[-1]) - len(core)]
    return ("".join(t[:-1]) + f"{lead}[{core}]").strip()


def describe(ex: Explanations, strings: dict[int, str]) -> list[str]:
    """One readable line per latent: `of [the] .92 · [The] .81 | covers 63% of firings`."""
    lines: list[list[str]] = [[] for _ in range(len(ex.fired_M))]
    prec = ex.precision_P
    for p in range(len(ex.m_P)):
        toks = [strings.get(int(t), f"#{int(t)}") for t in ex.tokens_PK[p] if t >= 0]
        shown = f"{prec[p]:.2f}".removeprefix("0")
        lines[ex.m_P[p]].append(f"{_show(toks)} {shown}")
    cov = ex.coverage()
    out = []
    for m, parts in enumerate(lines):
        if ex.fired_M[m] == 0:
            out.append("")
        elif not parts:
            out.append("no token pattern")
        else:
            out.append(f"{' · '.join(parts)} | covers {cov[m]:.0%} of firings")
    return out
