"""Detection scoring: an explanation predicts, on held-out windows it never saw, where a latent
fires; the prediction is compared with the latent's real activation.

Per token: every scored token of the test split; the explanation predicts "fires" where one of
the latent's patterns matches, and scores each token by the matched pattern's firing rate in the
explanation split (the latent's residual rate where none matches) for AUROC.
Per context: the test windows cut into contexts of `context_len` tokens; a context fires when the
latent fires on any of its tokens, is predicted to fire when any pattern matches in it, and is
scored by the best matched pattern. Up to `n_max` firing contexts are set against as many
non-firing ones drawn at random, and against as many hard negatives: non-firing contexts that
contain the activating token of one of the latent's patterns. Definitions:
docs/methods.md#interpretability-scores.
"""

from __future__ import annotations

import numpy as np

from sae.interpret.explanations import Corpus, Events, Explanations, ngram_keys

METRICS = ("precision", "recall", "f1", "balanced_accuracy", "auroc")


def match(ex: Explanations, c: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """(position n_J, pattern p_J) of every pattern occurrence at a scored position of `c`."""
    out_n, out_p = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    idx_S = np.flatnonzero(c.keep_N)
    for n in np.unique(ex.n_P):
        sel = np.flatnonzero(ex.n_P == n)
        order = np.argsort(ex.key_P[sel], kind="stable")
        sorted_key = ex.key_P[sel][order]
        key_S = ngram_keys(c, int(n))[idx_S]
        lo = np.searchsorted(sorted_key, key_S, "left")
        cnt = np.searchsorted(sorted_key, key_S, "right") - lo
        total = int(cnt.sum())
        off = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        out_n.append(np.repeat(idx_S, cnt))
        out_p.append(sel[order[np.repeat(lo, cnt) + off]])
    return np.concatenate(out_n), np.concatenate(out_p)


def _auroc_levels(m_R, s_R, pos_R, neg_R, M: int) -> np.ndarray:
    """AUROC per latent of a step-function score: rows are (latent, score level, positives,
    negatives at that level); ties count one half (Mann-Whitney)."""
    o = np.lexsort((s_R, m_R))
    m_R, s_R, pos_R, neg_R = m_R[o], s_R[o], pos_R[o], neg_R[o]
    new = np.r_[True, (m_R[1:] != m_R[:-1]) | (s_R[1:] != s_R[:-1])]
    g = np.cumsum(new) - 1
    pos_G, neg_G, m_G = np.bincount(g, pos_R), np.bincount(g, neg_R), m_R[new]
    cum_G = np.cumsum(neg_G)
    first_G = np.searchsorted(m_G, m_G)
    below_G = cum_G - neg_G - (cum_G[first_G] - neg_G[first_G])
    num_M = np.bincount(m_G, pos_G * (below_G + 0.5 * neg_G), minlength=M)
    P_M, N_M = np.bincount(m_G, pos_G, minlength=M), np.bincount(m_G, neg_G, minlength=M)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((P_M > 0) & (N_M > 0), num_M / (P_M * N_M), np.nan)


def _prf(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), np.where(tp + fn > 0, 0.0, np.nan))
        bal = 0.5 * (recall + tn / (tn + fp))
    return {"precision": precision, "recall": recall, "f1": f1, "balanced_accuracy": bal}


def token_scores(ex: Explanations, c: Corpus, ev: Events) -> dict[str, np.ndarray]:
    """Per-token detection metrics of every latent on corpus `c` (the test split)."""
    M = len(ex.fired_M)
    n_J, p_J = match(ex, c)
    ev_key = np.sort(ev.n_E.astype(np.int64) * M + ev.m_E)
    fired_J = np.isin(n_J * M + ex.m_P[p_J], ev_key, assume_unique=False)
    occ_P = np.bincount(p_J, minlength=len(ex.m_P))
    fire_P = np.bincount(p_J, fired_J, minlength=len(ex.m_P))
    N = int(c.keep_N.sum())
    pos_M = np.bincount(ev.m_E, minlength=M).astype(np.float64)
    tp = np.bincount(ex.m_P, fire_P, minlength=M)
    pp = np.bincount(ex.m_P, occ_P, minlength=M)
    out = _prf(tp, pp - tp, pos_M - tp, N - pos_M - (pp - tp))
    rows_m = np.r_[ex.m_P, np.arange(M)]
    rows_s = np.r_[ex.precision_P, ex.residual_rate()]
    rows_pos = np.r_[fire_P, pos_M - tp]
    rows_neg = np.r_[occ_P - fire_P, (N - pos_M) - (pp - tp)]
    out["auroc"] = _auroc_levels(rows_m, rows_s, rows_pos, rows_neg, M)
    out["firings"] = pos_M
    return out


def context_ids(c: Corpus, context_len: int) -> tuple[np.ndarray, int]:
    """Dense context id of each position (windows cut every `context_len` tokens) and the count."""
    per_win = int(c.pos_N.max(initial=0)) // context_len + 1
    raw = c.win_N.astype(np.int64) * per_win + c.pos_N // context_len
    uniq, inv = np.unique(raw, return_inverse=True)
    return inv, len(uniq)


def _pairs(m, cid, n_ctx: int, score=None):
    """Sorted unique (latent, context) keys, with the max score per key when given."""
    key = m.astype(np.int64) * n_ctx + cid
    if score is None:
        return sorted_unique(key), None
    o = np.lexsort((score, key))
    key, score = key[o], score[o]
    last = np.r_[key[1:] != key[:-1], True][: len(key)]
    return key[last], score[last]


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique is several times slower on millions of
    int64 keys)."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _metrics(y: np.ndarray, s: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    out = {k: float(v) for k, v in _prf(tp, fp, fn, tn).items()}
    neg = np.sort(s[~y])
    if y.any() and len(neg):  # Mann-Whitney: P(s_pos > s_neg) + P(=)/2
        lo, hi = np.searchsorted(neg, s[y], "left"), np.searchsorted(neg, s[y], "right")
        out["auroc"] = float((lo + 0.5 * (hi - lo)).sum() / (y.sum() * len(neg)))
    else:
        out["auroc"] = float("nan")
    return out


def context_scores(
    ex: Explanations,
    c: Corpus,
    ev: Events,
    context_len: int = 16,
    n_max: int = 50,
    seed: int = 0,
    latents: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-context metrics against random (`random_*`) and hard (`hard_*`) negatives."""
    M = len(ex.fired_M)
    cid_N, n_ctx = context_ids(c, context_len)
    fired_keys, _ = _pairs(ev.m_E, cid_N[ev.n_E], n_ctx)
    n_J, p_J = match(ex, c)
    match_keys, match_score = _pairs(ex.m_P[p_J], cid_N[n_J], n_ctx, ex.precision_P[p_J])
    last_tok = ex.tokens_PK[:, -1]
    unigram = ex._replace(n_P=np.ones_like(ex.n_P), key_P=last_tok + 1)
    n_U, p_U = match(unigram, c)
    has_keys, _ = _pairs(ex.m_P[p_U], cid_N[n_U], n_ctx)
    resid_M = ex.residual_rate()
    out = {f"{kind}_{k}": np.full(M, np.nan) for kind in ("random", "hard") for k in METRICS}
    out["hard_negatives"] = np.zeros(M)
    todo = np.flatnonzero(np.bincount(ev.m_E, minlength=M) > 0) if latents is None else latents
    for m in todo:
        lo, hi = m * n_ctx, (m + 1) * n_ctx
        pos = _slice(fired_keys, lo, hi) - lo
        if len(pos) == 0:
            continue
        rng = np.random.default_rng([seed, int(m)])
        n = min(len(pos), n_max)
        pos = rng.choice(pos, n, replace=False)
        silent = np.ones(n_ctx, bool)
        silent[_slice(fired_keys, lo, hi) - lo] = False
        neg_all = np.flatnonzero(silent)
        has = _slice(has_keys, lo, hi) - lo
        hard_all = has[silent[has]]
        out["hard_negatives"][m] = len(hard_all)
        mk = match_keys[np.searchsorted(match_keys, lo) : np.searchsorted(match_keys, hi)] - lo
        ms = match_score[np.searchsorted(match_keys, lo) : np.searchsorted(match_keys, hi)]
        for kind, pool in (("random", neg_all), ("hard", hard_all)):
            if len(pool) == 0:
                continue
            neg = rng.choice(pool, min(n, len(pool)), replace=False)
            ctx = np.r_[pos, neg]
            y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
            at = np.minimum(np.searchsorted(mk, ctx), max(len(mk) - 1, 0))
            hit = mk[at] == ctx if len(mk) else np.zeros(len(ctx), bool)
            s = np.where(hit, ms[at] if len(mk) else 0.0, resid_M[m])
            for k, v in _metrics(y, s, hit).items():
                out[f"{kind}_{k}"][m] = v
    return out


def _slice(sorted_keys: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return sorted_keys[np.searchsorted(sorted_keys, lo) : np.searchsorted(sorted_keys, hi)]
