"""The interpret suite's LLM part: explain sampled latents from their explanation-window contexts
and score the explanations on held-out test contexts (docs/methods.md#interpretability-scores).

The contexts come from the same split as the offline explanations: the explainer sees only
explanation windows; the scorer sees only test windows, `N_LLM` firing contexts of CONTEXT_LEN
tokens and as many non-firing ones drawn at random, in a seeded random order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sae.interpret.detection import METRICS, _metrics, context_ids
from sae.interpret.explanations import Corpus, Events
from sae.interpret.llm import ChatClient, LLMConfig, LLMError, detect, explain

N_LLM = 10
"""top and random firing contexts shown to the explainer (each), and firing / non-firing test
contexts shown to the scorer (each)."""
BEFORE, AFTER = 10, 5
"""explainer context around an activation (the records' window)."""
MAX_FAILURES = 3
"""consecutive failed latents after which the LLM part stops (an endpoint that is down)."""


def _explainer_contexts(c: Corpus, ev: Events, m: int, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(positions, activations of latent m there) around its top and some random firings."""
    sel = np.flatnonzero(ev.m_E == m)
    top = sel[np.argsort(-ev.a_E[sel], kind="stable")[:N_LLM]]
    rest = np.setdiff1d(sel, top)
    pick = np.r_[top, rng.choice(rest, min(N_LLM, len(rest)), replace=False)]
    act_N = np.zeros(len(c.tok_N), np.float32)
    act_N[ev.n_E[sel]] = ev.a_E[sel]
    out = []
    for n in ev.n_E[pick]:
        span = np.arange(max(n - BEFORE, 0), min(n + AFTER + 1, len(c.tok_N)))
        span = span[c.win_N[span] == c.win_N[n]]
        out.append((span, act_N[span]))
    return out


def llm_scores(
    cfg: LLMConfig,
    cache_dir: Path,
    ce: Corpus,
    eve: Events,
    ct: Corpus,
    evt: Events,
    latents: np.ndarray,
    strings: dict[int, str],
    seed: int,
    context_len: int = 16,
) -> dict[str, Any]:
    """Per sampled latent: the LLM's explanation and its detection metrics on test contexts."""
    rng = np.random.default_rng([seed, 0x11])
    chosen = np.sort(rng.choice(latents, min(cfg.max_latents, len(latents)), replace=False))
    cid_N, n_ctx = context_ids(ct, context_len)
    client = ChatClient(cfg, cache_dir)
    rows: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    failures = 0

    def text(pos: np.ndarray) -> list[str]:
        return [strings.get(int(t), "") for t in ct.tok_N[pos]]

    try:
        for m in chosen:
            r = np.random.default_rng([seed, int(m), 0x11])
            shown = [
                ([strings.get(int(t), "") for t in ce.tok_N[p]], a.tolist())
                for p, a in _explainer_contexts(ce, eve, int(m), r)
            ]
            fired = np.unique(cid_N[evt.n_E[evt.m_E == m]])
            pos = r.choice(fired, min(N_LLM, len(fired)), replace=False)
            pool = np.setdiff1d(np.arange(n_ctx), fired)
            neg = r.choice(pool, min(len(pos), len(pool)), replace=False)
            ctxs = np.r_[pos, neg]
            y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
            order = r.permutation(len(ctxs))
            try:
                expl = explain(client, shown)
                p = np.array(
                    detect(client, expl, [text(np.flatnonzero(cid_N == k)) for k in ctxs[order]])
                )
            except LLMError as e:
                errors.append(f"latent {int(m)}: {e}")
                failures += 1
                if failures >= MAX_FAILURES:
                    errors.append(f"stopped after {MAX_FAILURES} failed latents in a row")
                    break
                continue
            failures = 0
            prob = np.empty(len(ctxs))
            prob[order] = p
            rows[int(m)] = {"explanation": expl} | _metrics(y, prob, prob >= 0.5)
    finally:
        client.close()
    return {"latents": rows, "errors": errors, "requests": client.requests, "asked": len(chosen)}


def summary(rows: dict[int, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-metric arrays over the latents the LLM scored."""
    return {k: np.array([r[k] for r in rows.values()], dtype=np.float64) for k in METRICS}
