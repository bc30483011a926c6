"""What every evaluation suite sees and returns, and the registry of suites.

A suite is a module with two functions:

    def check(target: EvalTarget) -> None           # raise ConfigError before any work
    def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult

and one line in `SUITES` below. The runner calls every suite's `check` on every SAE before it
runs anything, then `run`, and writes what `run` returns into report.json / report.md. A suite
that needs activations reads `sae.eval.stream.rows(target, ctx.eval_tokens)` (rows with window
ids for the bootstrap, whatever the source); `sae.eval.stats` has the per-window sums and the
bootstrap; `ctx.figure_path(target, name)` is where a PNG goes.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, NamedTuple

from sae.config.schema import DataConfig
from sae.model.sae import SAE

SUITES: dict[str, str] = {
    "core": "sae.eval.core",
    "synthetic": "sae.eval.synthetic",
    "redundancy": "sae.eval.redundancy",
    "capacity": "sae.eval.capacity",
    "descramble": "sae.eval.descramble",
    "interaction": "sae.eval.interaction",
    "records": "sae.eval.records",
    "interpret": "sae.eval.interpret",
    "absorption": "sae.eval.absorption",
}
"""suite name -> module; a new suite is a module with check/run plus one line here."""

StreamKind = Literal["live", "file", "synthetic"]


def suite_module(name: str) -> ModuleType:
    return importlib.import_module(SUITES[name])


@dataclass(frozen=True, eq=False)
class EvalTarget:
    """One SAE to evaluate and where its activations come from."""

    name: str
    """short unique name (the folder name; a suffix is added on collision); also its report subfolder."""
    folder: Path
    sae: SAE
    meta: dict[str, Any]
    """cfg.json metadata: model_name, hook_name, target_hook_name, context_size, ..."""
    stream: StreamKind
    """'live' (run the model over held-out windows), 'file' (--activations), 'synthetic'."""
    source: Any
    """LiveSource (live), CacheSource/MatrixSource (file) or SyntheticData (synthetic)."""
    source_hooks: tuple[str, str | None]
    """(input hook, target hook or None) as the source names them."""
    data: DataConfig | None
    """held-out windows of a live stream (None otherwise)."""
    provenance: dict[str, Any]
    """JSON-able description of the activations (model, hook, data and its origin, path)."""
    windows_read: set[int] = field(default_factory=set)
    """global indices of the windows the suites read from a live or cached stream (filled as
    they read: `sae.eval.stream`); decides whether the text was held out from training."""

    @property
    def hook(self) -> str | None:
        return self.meta.get("hook_name")

    @property
    def target_hook(self) -> str | None:
        return self.meta.get("target_hook_name")

    @property
    def splice_hook(self) -> str | None:
        """Where the reconstruction replaces the activation: the target hook for transcoders."""
        return self.target_hook or self.hook


@dataclass
class EvalContext:
    """Shared, per-run state handed to every suite: settings, loaded models, memoised baselines."""

    eval_tokens: int
    n_boot: int
    seed: int
    device: str
    batch_windows: int
    out: Path
    models: dict[tuple, tuple[Any, Any]] = field(default_factory=dict)
    """(model name, revision, dtype, trust_remote_code, gguf_file) -> (model, tokenizer), loaded
    once per run."""
    memo: dict[Any, Any] = field(default_factory=dict)
    """suite-owned cache keyed by anything hashable (e.g. ablation baselines shared by a sweep)."""
    llm: Any = None
    """LLMConfig of the interpret suite's optional LLM explainer/scorer (None: not used)."""
    interaction: Any = None
    """InteractionConfig of the interaction suite (None: its defaults)."""
    timings: dict[str, float] = field(default_factory=dict)
    """seconds spent per phase, summed over SAEs (reported and printed by the bench)."""

    def figure_path(self, target: EvalTarget, name: str) -> Path:
        path = self.out / target.name / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class SuiteResult(NamedTuple):
    """What a suite hands back: JSON-able results, its figures, and its report.md section."""

    results: dict[str, Any]
    """JSON-able; headline numbers as `metric(...)` dicts."""
    figures: dict[str, str]
    """figure name -> path relative to the report folder."""
    markdown: str
    """the suite's section of report.md (no top-level heading)."""


def metric(
    value: float,
    ci95: tuple[float, float] | None,
    n: int,
    over: str,
    unit: str = "",
) -> dict[str, Any]:
    """A headline number as stored in report.json: value, 95% interval, and what it averages."""
    return {
        "value": finite(value),
        "ci95": None if ci95 is None else [finite(ci95[0]), finite(ci95[1])],
        "n": int(n),
        "over": over,
        "unit": unit,
    }


def finite(x: float) -> float | None:
    """JSON has no NaN/inf: non-finite numbers are stored as null."""
    x = float(x)
    return x if math.isfinite(x) else None


def fmt(m: dict[str, Any] | None, digits: int = 4) -> tuple[str, str]:
    """(value, interval) strings of a `metric` dict for report.md tables."""
    if m is None or m.get("value") is None:
        return "n/a", ""
    v = f"{m['value']:.{digits}g}"
    ci = m.get("ci95")
    if not ci or ci[0] is None or ci[1] is None:
        return v, ""
    return v, f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
