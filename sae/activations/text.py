"""Text sources and packing: documents -> tokens -> fixed-length windows.

    python -c "from sae.activations.text import builtin_documents; print(sum(map(len, builtin_documents())))"

Sources: the built-in corpus (Python's own English documentation: `pydoc_data.topics` plus the
standard library's docstrings, read with `ast`), local .txt/.jsonl/.parquet files or folders,
and Hugging Face datasets by name (streamed with `datasets.load_dataset`). Windows are
deterministic for a given source and tokenizer. Every `eval_every`-th window is held out for
evaluation, and the windows of each part are dealt to ranks round-robin.
"""

from __future__ import annotations

import ast
import itertools
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from sae.config import ConfigError, DataConfig

_SKIP_STDLIB_DIRS = {
    "test",
    "tests",
    "site-packages",
    "idlelib",
    "lib2to3",
    "__pycache__",
    "turtledemo",
}


def builtin_documents() -> Iterator[str]:
    """Python's English docs: pydoc topics (sorted by key), then stdlib docstrings (sorted walk).

    About 2.1 M characters on CPython 3.11; identical for a given Python version, no download.
    """
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    stdlib = sysconfig.get_paths()["stdlib"]
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_STDLIB_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(root, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                ):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield doc


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _hf_stream(path_or_name: str, cfg: DataConfig, data_files: list[str] | None = None):
    import datasets

    datasets.disable_progress_bars()
    try:
        if data_files is not None:
            return datasets.load_dataset(
                path_or_name, data_files=data_files, split="train", streaming=True
            )
        return datasets.load_dataset(
            path_or_name, cfg.dataset_config, split=cfg.split, streaming=True
        )
    except Exception as e:  # the Hub client raises many types when offline or the name is wrong
        where = (
            "read"
            if data_files or Path(path_or_name).exists()
            else "loaded from the Hugging Face Hub"
        )
        raise ConfigError(
            f"data.source={cfg.source!r} could not be {where} ({_first_line(e)})."
        ) from None


def _column(rows: Iterable[dict], cfg: DataConfig) -> Iterator[str]:
    for row in rows:
        if cfg.text_column not in row:
            raise ConfigError(
                f"data.text_column={cfg.text_column!r} is not a column of {cfg.source!r}; "
                f"its columns are {sorted(row)}."
            )
        text = row[cfg.text_column]
        if text:
            yield text


def _raw_documents(cfg: DataConfig) -> Iterator[str]:
    if cfg.source == "builtin":
        return builtin_documents()
    path = Path(cfg.source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return iter([path.read_text(encoding="utf-8")])
        if path.stat().st_size == 0:
            raise ConfigError(f"data.source={cfg.source!r} contains no text.")
        if suffix in (".jsonl", ".json"):
            return _column(_hf_stream("json", cfg, [str(path)]), cfg)
        if suffix == ".parquet":
            return _column(_hf_stream("parquet", cfg, [str(path)]), cfg)
        raise ConfigError(
            f"data.source={cfg.source!r} has suffix {suffix!r}; use .txt, .jsonl or .parquet."
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files and all(p.suffix.lower() == ".txt" for p in files):
            return (p.read_text(encoding="utf-8") for p in files)
        # A folder of .jsonl/.parquet files is a dataset repository: the same call as a Hub name.
        return _column(_hf_stream(str(path), cfg), cfg)
    if path.suffix.lower() in (".txt", ".jsonl", ".json", ".parquet") or cfg.source.startswith(
        ("/", ".")
    ):
        raise ConfigError(f"data.source={cfg.source!r} does not exist.")
    return _column(_hf_stream(cfg.source, cfg), cfg)


def documents(cfg: DataConfig) -> Iterator[str]:
    """Documents of the configured source; raises before any work if it is empty or misnamed."""
    docs = _raw_documents(cfg)
    try:
        first = next(docs, None)
    except ConfigError:
        raise
    except Exception as e:  # a malformed file surfaces only when the stream is first read
        raise ConfigError(
            f"data.source={cfg.source!r} could not be read ({_first_line(e)})."
        ) from None
    if first is None:
        raise ConfigError(f"data.source={cfg.source!r} contains no text.")
    return itertools.chain([first], docs)


def pack_windows(
    docs_tokens: Iterable[list[int]],
    context_size: int,
    bos_id: int | None,
    sep_id: int | None,
    bos: str = "window",
) -> Iterator[list[int]]:
    """Join documents with the separator and cut the stream into full windows.

    bos='window' puts BOS first in every window (context_size - 1 text tokens follow);
    bos='document' puts BOS before every document in the stream; bos='none' uses none.
    The ragged tail is dropped, so every window has exactly `context_size` tokens.
    """
    use_bos_window = bos == "window" and bos_id is not None
    n_text = context_size - 1 if use_bos_window else context_size
    buf: list[int] = []
    for toks in docs_tokens:
        if bos == "document" and bos_id is not None:
            buf.append(bos_id)
        buf.extend(toks)
        if sep_id is not None:
            buf.append(sep_id)
        start = 0
        while len(buf) - start >= n_text:
            body = buf[start : start + n_text]
            start += n_text
            yield [bos_id, *body] if use_bos_window else body
        del buf[:start]


def special_ids(tokenizer) -> tuple[int | None, int | None]:
    """(BOS, separator) for packing: CLS/SEP for BERT-style, BOS/EOS for decoders."""
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return bos, sep


class TokenWindows:
    """Deterministic, rank-sharded stream of token windows `[context_size]` (int64)."""

    def __init__(self, cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rank, self.world_size = rank, world_size
        # Documents are packed, so the tokenizer's own length limit does not apply here.
        tokenizer.model_max_length = int(1e30)
        self.bos_id, self.sep_id = special_ids(tokenizer)
        self._docs = documents(cfg)  # opened now so a bad source fails before any work

    def _token_lists(self, docs: Iterator[str]) -> Iterator[list[int]]:
        while batch := list(itertools.islice(docs, 64)):
            yield from self.tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (global window index, tokens) for this rank, beginning at global index `start`."""
        docs, self._docs = (
            (self._docs, None) if self._docs is not None else (documents(self.cfg), None)
        )
        windows = pack_windows(
            self._token_lists(docs), self.cfg.context_size, self.bos_id, self.sep_id, self.cfg.bos
        )
        part, every = self.cfg.part, self.cfg.eval_every
        j = 0  # index within the part: ranks deal windows of their part round-robin
        for i, window in enumerate(windows):
            if self.cfg.max_windows is not None and i >= self.cfg.max_windows:
                return
            held_out = every > 0 and i % every == every - 1
            if (part == "train" and held_out) or (part == "eval" and not held_out):
                continue
            if i >= start and j % self.world_size == self.rank:
                yield i, torch.tensor(window, dtype=torch.long)
            j += 1
