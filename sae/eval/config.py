"""`EvalConfig`: the settings of `sae eval`, one documented field each, checked on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import tyro

from sae.config import ConfigError
from sae.config.parse import cli
from sae.config.schema import DataConfig, StorageDtype
from sae.eval.base import SUITES
from sae.interpret.llm import LLMConfig
from sae.io.hub import split_repo_id

_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class InteractionConfig:
    """`--interaction.*`: budgets of the interaction suite (docs/methods.md#interaction-suite)."""

    window_tokens: int = 64
    """windows are cut to this many tokens (each Jacobian product is a block pass over one)."""
    moment_tokens: int = 4096
    """input rows for the Grams, PCA and firing patterns (at most --eval-tokens)."""
    mprime_tokens: int = 2048
    """input rows (the first windows) for LIB's M′."""
    edge_tokens: int = 256
    """input rows (the first windows) for the edges."""
    edge_positions: int = 8
    """output positions per window whose edges are scored."""
    out_directions: int = 64
    """downstream PCA directions kept (+ the constant); each costs a backward pass per window."""
    sources: int = 16
    """stochastic ±1 sources for M′ when positions × output nodes > 1024 (0: always exact)."""
    ablation_tokens: int = 128
    """input rows (the first windows) on which edges and directions are ablated."""
    tol: float = 0.01
    """edges needed: largest loss increase allowed (causal LMs: next-token CE, nats; encoders:
    FVU of the final hidden state)."""
    gamma: float = 1.0
    """Leiden resolution (1: Newman modularity, where one cluster scores Q = 0)."""

    def check(self) -> None:
        """One-sentence ConfigError for a bad value (called by EvalConfig)."""
        for name in ("window_tokens", "moment_tokens", "mprime_tokens", "edge_tokens",
                     "edge_positions", "out_directions", "ablation_tokens"):  # fmt: skip
            v = getattr(self, name)
            _check(v >= 1, f"interaction.{name}={v} must be a positive count.")
        _check(self.sources >= 0, f"interaction.sources={self.sources} must be >= 0 (0: exact).")
        _check(self.tol > 0, f"interaction.tol={self.tol} must be > 0.")
        _check(self.gamma > 0, f"interaction.gamma={self.gamma} must be > 0.")


@dataclass
class EvalConfig:
    """`sae eval SAE_DIR [SAE_DIR ...] --suite core,synthetic --out REPORT_DIR`."""

    sae_dirs: tyro.conf.Positional[list[str]]
    """SAE folders to evaluate (several give a frontier plot, e.g. checkpoints/run/final/*)."""
    suite: str = "core"
    """comma-separated suites to run; valid: see SUITES in sae/eval/base.py (core, synthetic,
    redundancy, capacity, descramble, interaction, records, interpret,
    absorption)."""
    activations: str | None = None
    """score on this activation cache folder or [tokens, d_in] .npy/.safetensors file instead of
    running the model (downstream fidelity then needs the model and is skipped)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(part="eval"))
    """held-out text for live activations; the SAE's recorded training data is the default and
    only the data fields given on the command line override it (a local data.source recorded
    there is read only when --data.source names it)."""
    data_fields: tyro.conf.Suppress[list[str]] = field(default_factory=list)
    """names of `data` fields that override the SAE's recorded data (the CLI fills this in)."""
    eval_tokens: int = 100_000
    """activation rows (tokens) scored per SAE; whole windows are read until this is reached."""
    n_boot: int = 1000
    """bootstrap resamples of windows (sequences) for the 95% intervals; 0: no intervals."""
    seed: int = 0
    """seed of the bootstrap resampling and of the random-dictionary nulls."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    model_name: str | None = None
    """the model to run (Hub name or local folder); None: the one the SAE's metadata records. A
    local folder recorded there is run only when named here (metadata can come from anyone)."""
    model_dtype: StorageDtype | None = None
    """dtype the model computes in; None: as the SAE's metadata records (float32 if it does
    not). A value contradicting the metadata is refused: the SAE was trained on that model."""
    revision: str | None = None
    """model revision (Hub branch, tag or commit); None: as recorded (else the default branch)."""
    trust_remote_code: bool | None = None
    """run the model repository's own code (True only on the command line: an SAE whose metadata
    records model_trust_remote_code: true is refused without it; the metadata never turns it on)."""
    batch_windows: int = 16
    """windows per model forward pass (memory: causal LMs hold 2 x batch x context x vocab
    logits in float32)."""
    out: str = "reports/eval"
    """report folder: report.json, report.md and PNG plots (files there are replaced)."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """optional LLM explainer/scorer of the interpret suite (--llm.base-url, --llm.model)."""
    interaction: InteractionConfig = field(default_factory=InteractionConfig)
    """budgets and tolerance of the interaction suite."""

    def __post_init__(self) -> None:
        _check(len(self.sae_dirs) > 0, "give at least one SAE folder to evaluate.")
        for d in self.sae_dirs:  # folders of any layout sae.load reads, or Hub 'org/name[/sub]'
            if Path(d).is_dir():
                continue
            repo = None if Path(d).exists() else split_repo_id(d)  # '..' parts: ConfigError
            _check(
                repo is not None,
                f"SAE folder {d!r} does not exist or is not a folder (nor a Hub repo id).",
            )
        _check(
            self.model_dtype is None or self.model_dtype in get_args(StorageDtype),
            f"model_dtype={self.model_dtype!r} is not one of {list(get_args(StorageDtype))}.",
        )
        names = self.suites
        _check(len(names) > 0, f"suite={self.suite!r} names no suite; valid: {', '.join(SUITES)}.")
        for name in names:
            _check(
                name in SUITES,
                f"unknown suite {name!r} in suite={self.suite!r}; valid suites are "
                f"{', '.join(SUITES)}.",
            )
        _check(
            self.activations is None
            or "://" in self.activations
            or Path(self.activations).exists(),
            f"activations={self.activations!r} does not exist (give a cache folder or a "
            ".npy/.safetensors file).",
        )
        _check(self.eval_tokens > 0, f"eval_tokens={self.eval_tokens} must be a positive count.")
        _check(self.n_boot >= 0, f"n_boot={self.n_boot} must be >= 0 (0: no intervals).")
        _check(self.batch_windows > 0, f"batch_windows={self.batch_windows} must be positive.")
        _check(
            not Path(self.out).is_file(),
            f"out={self.out!r} is a file; the report needs a folder.",
        )
        self.llm.check()
        self.interaction.check()
        for name in self.data_fields:
            _check(
                name in _DATA_FIELDS,
                f"data_fields names {name!r}, which is not a data field; valid: {list(_DATA_FIELDS)}.",
            )

    @property
    def suites(self) -> list[str]:
        return list(dict.fromkeys(s.strip() for s in self.suite.split(",") if s.strip()))

    def data_overrides(self) -> dict:
        return {name: getattr(self.data, name) for name in self.data_fields}


def parse_args(argv: list[str]) -> EvalConfig:
    """EvalConfig from command-line words (a bad one: ConfigError, one line); records which
    --data.* fields were given."""
    cfg = cli(EvalConfig, argv, "sae eval")
    return dataclasses.replace(cfg, data_fields=given_data_fields(argv))


def given_data_fields(argv: list[str]) -> list[str]:
    """The DataConfig fields set by `--data.*` words on the command line, in order, once each."""
    given = []
    for word in argv:
        if word.startswith("--data."):
            name = word[len("--data.") :].split("=", 1)[0].replace("-", "_")
            if name in _DATA_FIELDS:
                given.append(name)
    return list(dict.fromkeys(given))
