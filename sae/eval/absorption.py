"""The `absorption` suite: feature absorption on the first-letter task (Chanin et al. 2024;
SAEBench's definitions), on the model's own whole-word tokens (docs/methods.md#interpretability-scores).

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite absorption --out reports/abs
    sae eval SAE_DIR --suite interpret,absorption --device cuda --out reports/int     # GPU

Each word is run alone, framed as the SAE's training windows frame text ([CLS] word [SEP] for
tokenizers with those tokens such as BERT's; BOS word for a decoder whose windows start with BOS,
e.g. GPT-2, Llama; the bare token only when the windows carry no BOS), and read at the word's
position; SAEBench instead reads the word inside an in-context prompt ("{word} has the first
letter:"), which a CPU run over thousands of words cannot afford. Words are split into train and
test by a hash of the token id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sae.activations.capture import resolve_device
from sae.config import ConfigError
from sae.eval.base import EvalContext, EvalTarget, SuiteResult, metric
from sae.eval.interpret import boot_mean
from sae.interpret.absorption import (
    MIN_PROBE_F1,
    MIN_WORDS,
    absorption_scores,
    support,
    whole_words,
)
from sae.interpret.split import TEST, window_side

MAX_WORDS = 4000
"""whole-word tokens used at most (a seeded sample), for a CPU-sized run."""
BATCH = 256


def _words(target: EvalTarget, seed: int):
    tok = target.source.windows.tokenizer
    ids, words = whole_words(tok)
    if len(ids) > MAX_WORDS:
        keep = np.sort(np.random.default_rng([seed, 0xAB5]).choice(len(ids), MAX_WORDS, False))
        ids, words = [ids[i] for i in keep], [words[i] for i in keep]
    train = window_side(np.array(ids, dtype=np.int64), seed) != TEST
    return tok, ids, words, train


def check(target: EvalTarget) -> None:
    if target.stream != "live":
        raise ConfigError(
            f"the absorption suite runs the SAE's model on its vocabulary's words, but "
            f"{target.name!r} is scored on {target.stream} activations; drop --activations."
        )
    _, ids, words, train = _words(target, 0)
    letters = support(words, train)
    if len(letters) < 2:
        raise ConfigError(
            f"the vocabulary of {target.meta.get('model_name')!r} cannot support the first-letter "
            f"task: {len(ids)} whole-word alphabetic tokens, {len(letters)} letters with at least "
            f"{MIN_WORDS} train and {MIN_WORDS} test words (2 needed); leave out --suite absorption."
        )


def word_frame(tok, bos: str) -> tuple[Callable[[int], list[int]], int]:
    """(token id -> the word's input ids, the word's position in them): the word framed as the
    SAE's training windows frame text (docs/methods.md#absorption-suite). A decoder's windows
    start with BOS (data.bos 'window' or 'document'), so the word follows it: alone at position
    0 a causal LM's residual stream is its attention-sink state, nearly the same for every token
    and never seen by an SAE trained with exclude_bos (SmolLM2: every letter's main latent was
    one of two latents)."""
    cls, sep = getattr(tok, "cls_token_id", None), getattr(tok, "sep_token_id", None)
    if cls is not None and sep is not None:
        return (lambda i: [cls, i, sep]), 1
    first = getattr(tok, "bos_token_id", None)
    if first is not None and bos != "none":
        return (lambda i: [first, i]), 1
    return (lambda i: [i]), 0


def _activations(target: EvalTarget, ctx: EvalContext, tok, ids: list[int]):
    """(x [W, d_in] at the word's position, SAE latents [W, d_sae]) for each word token."""
    src, hook = target.source, target.source_hooks[0]
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    frame, at = word_frame(tok, target.data.bos if target.data is not None else "window")
    xs, acts = [], []
    for s in range(0, len(ids), BATCH):
        ids_BT = torch.tensor([frame(i) for i in ids[s : s + BATCH]])
        with torch.no_grad():
            x_BD = src.capture(ids_BT)[hook][:, at].float().to(device)
            acts.append(sae.encode(x_BD).float().cpu().numpy())
        xs.append(x_BD.cpu().numpy())
    return np.concatenate(xs).astype(np.float64), np.concatenate(acts).astype(np.float64)


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    tok, ids, words, train = _words(target, ctx.seed)
    x_WD, a_WM = _activations(target, ctx, tok, ids)
    W_dec = target.sae.W_dec.detach().float().cpu().numpy().astype(np.float64)
    res = absorption_scores(x_WD, a_WM, W_dec, words, train)
    scored = {L: r for L, r in res["letters"].items() if "skipped" not in r}
    means: dict[str, Any] = {}
    for k in ("absorption_fraction", "full_absorption_rate", "split_features"):
        v = np.array([r[k] for r in scored.values()], dtype=np.float64)
        means[k] = metric(*boot_mean(v, ctx.n_boot, ctx.seed), "scored letters (mean)")
    results = {
        "words": len(ids),
        "train_words": int(train.sum()),
        "test_words": int((~train).sum()),
        "scored_letters": res["scored_letters"],
        "mean": means,
        "letters": res["letters"],
    }
    return SuiteResult(results, {}, _markdown(results))


def _markdown(r: dict) -> str:
    out = [
        f"First-letter task on {r['words']:,} whole-word tokens ({r['train_words']:,} train, "
        f"{r['test_words']:,} test); {r['scored_letters']} letters scored. Means over letters: "
        + ", ".join(
            f"{k.replace('_', ' ')} {m['value']:.3g}" if m["value"] is not None else f"{k} n/a"
            for k, m in r["mean"].items()
        )
        + "."
        + _unmeasurable(r),
        "",
        "| letter | probe F1 | main latents | split features | absorption fraction | full absorption |",
        "|---|---|---|---|---|---|",
    ]
    for L, row in r["letters"].items():
        if "skipped" in row:
            out.append(f"| {L} | {row['probe_f1']:.2f} | skipped: {row['skipped']} | | | |")
            continue
        out.append(
            f"| {L} | {row['probe_f1']:.2f} | {row['main_latents']} | {row['split_features']} | "
            f"{row['absorption_fraction']:.3f} | {row['full_absorption_rate']:.3f} |"
        )
    return "\n".join(out)


def _unmeasurable(r: dict) -> str:
    """The reason in one sentence when no letter could be scored for want of a probe."""
    f1 = [row["probe_f1"] for row in r["letters"].values()]
    if r["scored_letters"] or not f1:
        return ""
    return (
        f" No letter's probe reaches F1 {MIN_PROBE_F1} on test words (median "
        f"{float(np.median(f1)):.2f}): the activations at this hook do not carry the first "
        "letter linearly, so absorption cannot be measured on this SAE."
    )
