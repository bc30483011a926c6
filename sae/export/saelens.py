"""`sae export SAE_DIR --format saelens --out DIR`: an SAELens v6 folder plus a model card.

    sae export checkpoints/default/final/resid_post.3-topk-3072-k32 --format saelens --out hub/l3
    huggingface-cli upload me/minilm-saes hub/l3 .      # the folder is a Hub repository as is

Exports any SAE `sae.load` reads (a folder of any layout, a Hub repo id; loaded once, by `sae
export`'s checks): cfg.json, sae_weights.safetensors (and sparsity.safetensors when the source
has one) with `sae.io.save`, and README.md: architecture, model and hook, training tokens,
held-out figures (train_summary.json of our runs: FVU, L0, dead and dense latents; report.json's
core suite when `--report` is given).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from sae.fsutil import atomic_write_text, require_ours
from sae.io import SPARSITY_FILE, saelens_architecture, save
from sae.io.records import Report, ReportEntry, TrainSummary
from sae.model.sae import SAE


def _summary(src: Path) -> TrainSummary | None:
    """The training run's held-out scores beside the SAE (our runs write them; other libraries'
    folders and Hub repos have none)."""
    if not (src / TrainSummary.FILE).is_file():
        return None
    return TrainSummary.read(src)


def _report_entry(src: Path, report: Path | None) -> ReportEntry | None:
    if report is None:
        return None
    where = src.resolve() if src.exists() else src  # a Hub repo id stays as given
    return Report.read(report).entry(where)


def _heldout_lines(summary: TrainSummary | None, entry: ReportEntry | None) -> list[str]:
    lines = []
    if summary is not None:
        on = f"sae train: {summary.eval_tokens} tokens of {summary.eval_source}"
        for label, value in (
            ("fvu", summary.fvu),
            ("l0", summary.l0),
            ("dead latents, % (never fired)", summary.dead_pct),
            ("dense latents, % (fire on > 1% of tokens)", summary.dense_pct_1),
            ("dense latents, % (fire on > 10% of tokens)", summary.dense_pct_10),
        ):
            if value is not None:
                lines.append(f"| {label} | {value:.4g} | {on} |")
    if entry is not None:
        core = entry.results.get("core", {}).get("reconstruction", {})
        held = entry.activations.get("held_out")
        for key in ("fvu", "explained_variance", "l0", "cosine"):
            m = core.get(key)
            if isinstance(m, dict) and m.get("value") is not None:
                ci = m.get("ci95") or [None, None]
                band = f" (95% CI {ci[0]:.4g} – {ci[1]:.4g})" if ci[0] is not None else ""
                lines.append(f"| {key} | {m['value']:.4g}{band} | sae eval, held out: {held} |")
    return lines


def model_card(
    model: SAE, src: Path, summary: TrainSummary | None, entry: ReportEntry | None
) -> str:
    meta, c = model.metadata, model.cfg
    arch = saelens_architecture(model)
    rows = [
        ("SAELens architecture", arch),
        ("sae architecture", c.architecture),
        ("d_in", c.d_in),
        ("d_sae", c.d_sae),
        ("k", c.k if c.architecture in ("topk", "batchtopk", "matryoshka") else None),
        ("d_out (transcoder)", c.d_out),
        ("model", meta.get("model_name")),
        ("hook", meta.get("hook_name")),
        ("target hook", meta.get("target_hook_name")),
        ("training tokens", meta.get("tokens_trained")),
        ("context size", meta.get("context_size")),
        (
            "training data",
            (meta.get("data") or {}).get("source") if isinstance(meta.get("data"), dict) else None,
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)
    held = _heldout_lines(summary, entry)
    held_md = (
        "| figure | value | scored on |\n|---|---|---|\n" + "\n".join(held)
        if held
        else "No held-out figures were recorded with this folder (run `sae eval` and pass `--report`)."
    )
    return f"""---
library_name: saelens
tags:
- sparse-autoencoder
- sae
- interpretability
---

# {src.name}

A sparse autoencoder in the SAELens v6 folder layout, exported by `sae export --format saelens`.

```python
from sae_lens import SAE
sae = SAE.load_from_disk("path/to/this/folder")      # or SAE.from_pretrained on the Hub repo
import sae as sae_pkg; d = sae_pkg.load("path/to/this/folder")
```

| field | value |
|---|---|
{table}

## Held-out figures

{held_md}

Activation normalisation is folded into the weights: the SAE maps raw activations at the hook to
raw reconstructions.
"""


def export_saelens(model: SAE, src: Path, out: Path, report: Path | None = None) -> Path:
    """Write `model` (loaded from `src`: a folder or a Hub repo id) as an SAELens v6 folder with
    its README.md to `out`; returns `out`. The figures are read before anything is written."""
    require_ours(out, "sae")  # an SAE folder of ours is replaced whole; anything else refused
    summary, entry = _summary(src), _report_entry(src, report)
    sparsity = None
    if (src / SPARSITY_FILE).is_file():
        sparsity = load_file(str(src / SPARSITY_FILE)).get("sparsity")
        if sparsity is not None and tuple(sparsity.shape) != (model.cfg.d_sae,):
            sparsity = None
    save(model, out, metadata=model.metadata, sparsity_log10=sparsity)
    atomic_write_text(out / "README.md", model_card(model, src, summary, entry))
    return out
