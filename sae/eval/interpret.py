"""The `interpret` suite: offline explanations of every latent, scored by detection on held-out
windows the explanation never saw, beside two baselines (docs/methods.md#interpretability-scores).

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite interpret --out reports/int
    sae eval SAE_DIR --suite interpret --device cuda --eval-tokens 1000000 --out reports/int   # GPU
    sae eval SAE_DIR --suite interpret --llm.base-url http://localhost:8000/v1 \
        --llm.model my-model --out reports/int          # + LLM explainer/scorer (key: $OPENAI_API_KEY)

One streaming pass over the SAE's held-out windows (the same windows the records suite reads)
keeps the token ids and the sparse firings (tokens × L0 entries, never [tokens, d_sae]). Windows
are split by a hash of their index (sae/interpret/split.py): explanations come from one side,
scores from the other. Baselines, scored the same way on the same test windows: each latent's
most frequent firing token alone (`top_token`), and a random latent of the same firing frequency
explained and scored by the same method (`random_latent`).

Written: REPORT/<sae>/interpret/interpret.json (settings, the window split, every latent's
patterns), per-latent columns `interp_*` in REPORT/<sae>/latents.parquet; report.json holds the
means over scored latents with bootstrap intervals over latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sae.activations.capture import resolve_device
from sae.config import ConfigError
from sae.eval.base import EvalContext, EvalTarget, SuiteResult, fmt, metric
from sae.eval.finalize import token_strings
from sae.eval.stream import window_batches
from sae.eval.table import TABLE_FILE, update_latents_table
from sae.fsutil import atomic_write_json
from sae.interpret.detection import METRICS, context_scores, sorted_unique, token_scores
from sae.interpret.explanations import (
    Corpus,
    Events,
    ExplainSettings,
    Explanations,
    describe,
    explain,
    top_token,
)
from sae.interpret.llm_judge import llm_scores
from sae.interpret.llm_judge import summary as llm_summary
from sae.interpret.split import EXPLAIN, TEST, window_side

CONTEXT_LEN = 16
"""tokens per context in the per-context scores (the records' context width: 10 + 1 + 5)."""
N_CONTEXTS = 50
"""most firing contexts per latent in the per-context scores (as many negatives of each kind)."""
MIN_FIRINGS = 5
"""a latent is scored when it fires at least this often in each side of the split."""
KINDS = ("explanation", "top_token", "random_latent")
VIEWS = ("token", "random", "hard")


def check(target: EvalTarget) -> None:
    if target.stream != "live":
        raise ConfigError(
            f"the interpret suite explains latents by the text they fire on, but {target.name!r} "
            f"is scored on {target.stream} activations without tokens; drop --activations (the "
            "SAE's model is then run over its held-out text)."
        )


def collect(target: EvalTarget, ctx: EvalContext) -> tuple[Corpus, Events]:
    """Token ids of the held-out windows read and the SAE's firings on their scored tokens."""
    src, hook = target.source, target.source_hooks[0]
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("tok", "keep", "win", "pos", "n", "m", "a")
    }
    offset = 0
    bar = tqdm(total=ctx.eval_tokens, unit="tok", unit_scale=True, desc=f"interpret {target.name}")
    for wb in window_batches(src, ctx.eval_tokens, ctx.batch_windows, target.windows_read):
        B, T = wb.ids_BT.shape
        with torch.no_grad():
            a_BTM = sae.encode(src.capture(wb.ids_BT)[hook].float().to(device))
        a_NM = (a_BTM * wb.keep_BT.to(device)[..., None]).reshape(B * T, -1)
        n_E, m_E = a_NM.nonzero(as_tuple=True)
        parts["a"].append(a_NM[n_E, m_E].float().cpu().numpy())
        parts["n"].append(n_E.cpu().numpy() + offset)
        parts["m"].append(m_E.cpu().numpy())
        parts["tok"].append(wb.ids_BT.reshape(-1).numpy().astype(np.int64))
        parts["keep"].append(wb.keep_BT.reshape(-1).numpy())
        parts["win"].append(np.repeat(wb.index_B.numpy(), T))
        parts["pos"].append(np.tile(np.arange(T), B))
        offset += B * T
        bar.update(int(wb.keep_BT.sum()))
    bar.close()
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    corpus = Corpus(cat["tok"], cat["keep"].astype(bool), cat["win"], cat["pos"])
    return corpus, Events(cat["n"].astype(np.int64), cat["m"].astype(np.int64), cat["a"])


def random_latents(c: Corpus, ev: Events, d_sae: int, seed: int) -> Events:
    """For each latent, a latent firing on uniformly random scored tokens at its frequency
    (positions drawn with replacement, repeats merged)."""
    rng = np.random.default_rng([seed, 0x1A7])
    scored_S = np.flatnonzero(c.keep_N)
    count_M = rng.binomial(len(scored_S), np.bincount(ev.m_E, minlength=d_sae) / len(scored_S))
    m_E = np.repeat(np.arange(d_sae), count_M)
    key = sorted_unique(m_E * len(c.tok_N) + scored_S[rng.integers(0, len(scored_S), len(m_E))])
    return Events(key % len(c.tok_N), key // len(c.tok_N), np.ones(len(key), np.float32))


def score_all(
    c: Corpus, ev: Events, d_sae: int, seed: int, settings: ExplainSettings | None = None
) -> dict[str, Any]:
    """Split, explain, score the explanation and both baselines; per-latent arrays."""
    side_N = window_side(c.win_N, seed)
    expl_N, test_N = side_N == EXPLAIN, side_N == TEST
    ce, ct = c.select(expl_N), c.select(test_N)
    rand = random_latents(c, ev, d_sae, seed)
    sets: dict[str, tuple[Explanations, Events, Events]] = {}
    ex = explain(ce, ev.remap(expl_N), d_sae, settings)
    sets["explanation"] = (ex, ev.remap(expl_N), ev.remap(test_N))
    sets["top_token"] = (top_token(ce, ev.remap(expl_N), d_sae), *sets["explanation"][1:])
    sets["random_latent"] = (
        explain(ce, rand.remap(expl_N), d_sae, settings),
        rand.remap(expl_N),
        rand.remap(test_N),
    )
    fired_e = np.bincount(sets["explanation"][1].m_E, minlength=d_sae)
    fired_t = np.bincount(sets["explanation"][2].m_E, minlength=d_sae)
    scored = np.flatnonzero((fired_e >= MIN_FIRINGS) & (fired_t >= MIN_FIRINGS))
    per: dict[str, np.ndarray] = {}
    for kind, (x, _, ev_t) in sets.items():
        tok = token_scores(x, ct, ev_t)
        ctx_s = context_scores(x, ct, ev_t, CONTEXT_LEN, N_CONTEXTS, seed, scored)
        for k in METRICS:
            per[f"{kind}.token_{k}"] = tok[k]
            per[f"{kind}.random_{k}"] = ctx_s[f"random_{k}"]
            per[f"{kind}.hard_{k}"] = ctx_s[f"hard_{k}"]
        per[f"{kind}.hard_negatives"] = ctx_s["hard_negatives"]
    wins = np.unique(c.win_N)
    split = {
        "rule": "window_side(window index, seed): low bit of splitmix64 (sae/interpret/split.py)",
        "seed": seed,
        "explanation_windows": wins[window_side(wins, seed) == EXPLAIN].tolist(),
        "test_windows": wins[window_side(wins, seed) == TEST].tolist(),
        "explanation_tokens": int(ce.keep_N.sum()),
        "test_tokens": int(ct.keep_N.sum()),
    }
    return {
        "ex": ex,
        "per": per,
        "scored": scored,
        "split": split,
        "fired": (fired_e, fired_t),
        "sides": (ce, sets["explanation"][1], ct, sets["explanation"][2]),
    }


def boot_mean(
    v: np.ndarray, n_boot: int, seed: int
) -> tuple[float, tuple[float, float] | None, int]:
    """Mean over latents where defined and its percentile bootstrap 95% interval over latents."""
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), None, 0
    if n_boot == 0 or len(v) < 2:
        return float(v.mean()), None, len(v)
    rng = np.random.default_rng([seed, 0xB007])
    means = np.empty(n_boot)
    for b in range(n_boot):
        means[b] = v[rng.integers(0, len(v), len(v))].mean()
    return (
        float(v.mean()),
        (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))),
        len(v),
    )


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    d_sae = target.sae.cfg.d_sae
    corpus, events = collect(target, ctx)
    settings = ExplainSettings()
    res = score_all(corpus, events, d_sae, ctx.seed, settings)
    ex, per, scored = res["ex"], res["per"], res["scored"]
    strings = token_strings(target.source.windows.tokenizer, torch.from_numpy(ex.tokens_PK))
    lines = describe(ex, strings)
    summary: dict[str, Any] = {}
    for kind in KINDS:
        for view in VIEWS:
            for k in METRICS:
                v, ci, n = boot_mean(per[f"{kind}.{view}_{k}"][scored], ctx.n_boot, ctx.seed)
                summary.setdefault(kind, {}).setdefault(view, {})[k] = metric(
                    v, ci, n, "scored latents (mean)"
                )
    cov = ex.coverage()
    summary["explanation"]["coverage"] = metric(
        *boot_mean(cov[scored], ctx.n_boot, ctx.seed), "scored latents (mean)"
    )
    folder = ctx.out / target.name / "interpret"
    patterns = [
        {
            "latent": int(ex.m_P[p]),
            "tokens": [int(t) for t in ex.tokens_PK[p] if t >= 0],
            "strings": [strings.get(int(t), "") for t in ex.tokens_PK[p] if t >= 0],
            "precision": float(ex.precision_P[p]),
            "firings": int(ex.fire_P[p]),
            "occurrences": int(ex.occ_P[p]),
        }
        for p in range(len(ex.m_P))
    ]
    atomic_write_json(
        folder / "interpret.json",
        {
            "settings": dataclasses.asdict(settings)
            | {"context_len": CONTEXT_LEN, "n_contexts": N_CONTEXTS, "min_firings": MIN_FIRINGS},
            "split": res["split"],
            "scored_latents": scored.tolist(),
            "patterns": patterns,
        },
    )
    cols = _columns(per, lines, cov, scored, res["fired"], d_sae)
    llm = ctx.llm if ctx.llm is not None and ctx.llm.enabled else None
    results = {
        "latents": d_sae,
        "scored_latents": len(scored),
        "tokens": {k: res["split"][k] for k in ("explanation_tokens", "test_tokens")},
        "windows": {k: len(res["split"][k]) for k in ("explanation_windows", "test_windows")},
        "scores": summary,
        "interpret": str((folder / "interpret.json").relative_to(ctx.out)),
    }
    if llm is not None:
        results["llm"], llm_cols = _llm(target, ctx, res, folder)
        cols |= llm_cols
    # one write: a run without the LLM drops an earlier run's interp_llm_* columns
    update_latents_table(ctx.out / target.name / TABLE_FILE, cols, "interpret", d_sae)
    return SuiteResult(results, {}, _markdown(results, lines, per, scored))


def _llm(
    target: EvalTarget, ctx: EvalContext, res: dict, folder
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Explain and score a sample of the scored latents with the LLM: (report, its per-latent
    columns)."""
    ce, eve, ct, evt = res["sides"]
    ids = torch.from_numpy(np.unique(np.r_[ce.tok_N, ct.tok_N]))
    strings = token_strings(target.source.windows.tokenizer, ids)
    cfg = ctx.llm
    out = llm_scores(cfg, folder / "llm_cache", ce, eve, ct, evt, res["scored"], strings, ctx.seed)
    d_sae = target.sae.cfg.d_sae
    rows = out["latents"]
    cols: dict[str, Any] = {
        "interp_llm_explanation": [rows.get(m, {}).get("explanation", "") for m in range(d_sae)],
        "interp_llm_model": [cfg.model if m in rows else "" for m in range(d_sae)],
    }
    for k in METRICS:
        col = np.full(d_sae, np.nan)
        for m, r in rows.items():
            col[m] = r[k]
        cols[f"interp_llm_{k}"] = col
    arrays = llm_summary(rows)
    scores = {
        k: metric(*boot_mean(arrays[k], ctx.n_boot, ctx.seed), "LLM-scored latents (mean)")
        for k in METRICS
    }
    return {
        "base_url": cfg.base_url,
        "model": cfg.model,
        "asked": out["asked"],
        "scored": len(rows),
        "requests": out["requests"],
        "errors": out["errors"],
        "scores": scores,
    }, cols


def _columns(per, lines, cov, scored, fired, d_sae: int) -> dict[str, Any]:
    is_scored = np.zeros(d_sae, bool)
    is_scored[scored] = True
    cols: dict[str, Any] = {
        "interp_explanation": lines,
        "interp_coverage": cov,
        "interp_scored": is_scored,
        "interp_firings_explain": fired[0],
        "interp_firings_test": fired[1],
    }
    for kind in KINDS:
        keep = METRICS if kind == "explanation" else ("f1", "auroc")
        prefix = "interp_" if kind == "explanation" else f"interp_{kind}_"
        for view in VIEWS:
            for k in keep:
                cols[f"{prefix}{view}_{k}"] = per[f"{kind}.{view}_{k}"]
    cols["interp_hard_negatives"] = per["explanation.hard_negatives"]
    return cols


def _markdown(r: dict, lines: list[str], per: dict, scored: np.ndarray) -> str:
    s = r["scores"]
    out = [
        f"Offline explanations of {r['latents']:,} latents from {r['tokens']['explanation_tokens']:,}"
        f" tokens ({r['windows']['explanation_windows']} windows), scored on "
        f"{r['tokens']['test_tokens']:,} tokens of {r['windows']['test_windows']} other windows; "
        f"{r['scored_latents']:,} latents fire at least {MIN_FIRINGS} times on each side and are "
        "scored (means over them, 95% bootstrap intervals over latents). "
        f"Patterns cover {fmt(s['explanation']['coverage'], 3)[0]} of a latent's firings on average.",
        "",
        "| view | metric | explanation | top token | random latent |",
        "|---|---|---|---|---|",
    ]
    names = {"token": "per token", "random": "contexts vs random", "hard": "contexts vs hard"}
    for view in VIEWS:
        for k in METRICS:
            cells = [" ".join(fmt(s[kind][view][k], 3)) for kind in KINDS]
            out.append(f"| {names[view]} | {k} | " + " | ".join(cells) + " |")
    f1 = np.nan_to_num(per["explanation.token_f1"][scored], nan=-1.0)
    best = scored[np.argsort(-f1, kind="stable")[:5]]
    out += ["", "Best explained latents (per-token F1):", ""]
    out += [f"- latent {m} (F1 {per['explanation.token_f1'][m]:.2f}): `{lines[m]}`" for m in best]
    if "llm" in r:
        q = r["llm"]
        out += [
            "",
            f"LLM `{q['model']}` at `{q['base_url']}`: {q['scored']} of {q['asked']} sampled "
            f"latents explained and scored ({q['requests']} requests, {len(q['errors'])} errors); "
            "contexts vs random: "
            + ", ".join(f"{k} {' '.join(fmt(q['scores'][k], 3))}" for k in METRICS)
            + ".",
        ]
    return "\n".join(out)
