"""Text sources and packing: documents -> tokens -> fixed-length windows.

    python -c "from sae.activations.text import builtin_documents; print(sum(map(len, builtin_documents())))"

Sources: the built-in corpus (Python's own English documentation: `pydoc_data.topics` plus the
standard library's docstrings, read with `ast`), local .txt/.jsonl/.parquet files or folders,
and Hugging Face datasets by name (streamed with `datasets.load_dataset`; pyproject requires
datasets >= 4.0, which removed loading scripts, so a dataset's own `NAME.py` never runs and a
folder or Hub repo holding one is refused in one line). Windows are
deterministic for a given source and tokenizer. Every `eval_every`-th window is held out for
evaluation, and the windows of each part are dealt to ranks round-robin.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import itertools
import json
import os
import sys
import sysconfig
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from sae.config import ConfigError
from sae.config.schema import DataConfig
from sae.fsutil import ForeignFolderError, atomic_write_text, claim

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
    return (doc for _, doc in keyed_builtin_documents())


_PER_FILE = 1 << 20
"""builtin document keys are file number * _PER_FILE + docstring number within the file."""

_BUILTIN_CACHE_VERSION = 1
"""Bump when the extraction below changes what it yields, so old cache files are not read."""

_builtin_memo: list[tuple[int, str]] | None = None
"""The whole corpus once a process has read it (about 2 MB): later passes parse nothing."""


def _builtin_files() -> tuple[str, list[Path]]:
    """The stdlib folder and its .py files in corpus order (a sorted walk without tests)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_STDLIB_DIRS)
        files += [Path(root, n) for n in sorted(names) if n.endswith(".py")]
    return stdlib, files


def builtin_cache_file() -> Path:
    """Where the extracted corpus is kept between runs: `$SAE_CACHE_DIR`, else
    `$XDG_CACHE_HOME/sae` or `~/.cache/sae`; the name hashes the Python version and every source
    file's path, size and mtime, so an upgraded or edited stdlib is parsed afresh."""
    stdlib, files = _builtin_files()
    stats = [(str(f.relative_to(stdlib)), *_size_mtime(f)) for f in files]
    key = json.dumps([_BUILTIN_CACHE_VERSION, sys.version, stdlib, stats])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    root = os.environ.get("SAE_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "sae"
    )
    return Path(root, f"builtin-docs-{digest}.json")


def _size_mtime(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns


def _load_builtin() -> list[tuple[int, str]] | None:
    """The corpus from this process's memo or the disk cache; None when neither has it."""
    global _builtin_memo
    if _builtin_memo is None:
        try:
            docs = json.loads(builtin_cache_file().read_text(encoding="utf-8"))
            _builtin_memo = [(int(k), str(d)) for k, d in docs]
        except (OSError, ValueError, TypeError):  # absent, unreadable or damaged: parse again
            return None
    return _builtin_memo


def _save_builtin(docs: list[tuple[int, str]]) -> None:
    global _builtin_memo
    _builtin_memo = docs
    path = builtin_cache_file()
    # A cache only: a read-only home, or a cache folder that is not ours (sae/fsutil.py), costs
    # the parse, never the run. Written whole or not at all, even with several writers.
    try:
        claim(path.parent, "corpus")
        atomic_write_text(path, json.dumps(docs))
    except (OSError, ForeignFolderError):
        pass


def keyed_builtin_documents(start: int = 0) -> Iterator[tuple[int, str]]:
    """(key, document) of the built-in corpus from key `start` on.

    The first full pass parses the stdlib with `ast` (about 8 s on a 2-core VM) and keeps the
    result in memory and in `builtin_cache_file()`; every later read, in this process or the
    next, is a lookup. Without a cache, files before the one holding `start` are skipped
    unparsed."""
    docs = _load_builtin()
    if docs is not None:
        yield from docs[bisect.bisect_left(docs, start, key=lambda kd: kd[0]) :]
        return
    kept: list[tuple[int, str]] | None = [] if start == 0 else None
    for key, doc in _parse_builtin(start):
        if kept is not None:
            kept.append((key, doc))
        yield key, doc
    if kept is not None:  # read to the end: keep it for later passes and runs
        _save_builtin(kept)


def _parse_builtin(start: int) -> Iterator[tuple[int, str]]:
    from pydoc_data.topics import topics

    first_file = start // _PER_FILE
    if first_file == 0:
        for j, key in enumerate(sorted(topics)):
            if j >= start:
                yield j, topics[key]
    for n, path in enumerate(_builtin_files()[1], start=1):
        if n < first_file:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        j = 0
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    key = n * _PER_FILE + j
                    j += 1
                    if key >= start:
                        yield key, doc


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


def _column(stream, cfg: DataConfig, start: int) -> Iterator[tuple[int, str]]:
    # The dataset's own skip: rows before `start` are never tokenized (nor, for Parquet,
    # decoded beyond their row group), so a resume does not re-read what the run consumed.
    rows = stream.skip(start) if start else stream
    for key, row in enumerate(rows, start):
        if cfg.text_column not in row:
            raise ConfigError(
                f"data.text_column={cfg.text_column!r} is not a column of {cfg.source!r}; "
                f"its columns are {sorted(row)}."
            )
        text = row[cfg.text_column]
        if text:
            yield key, text


def _raw_documents(cfg: DataConfig, start: int = 0) -> Iterator[tuple[int, str]]:
    """(key, text) from document `start` on; a key counts the source's own rows or files."""
    if cfg.source == "builtin":
        return keyed_builtin_documents(start)
    path = Path(cfg.source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return iter([(0, path.read_text(encoding="utf-8"))] if start == 0 else [])
        if path.stat().st_size == 0:
            raise ConfigError(f"data.source={cfg.source!r} contains no text.")
        if suffix in (".jsonl", ".json"):
            return _column(_hf_stream("json", cfg, [str(path)]), cfg, start)
        if suffix == ".parquet":
            return _column(_hf_stream("parquet", cfg, [str(path)]), cfg, start)
        raise ConfigError(
            f"data.source={cfg.source!r} has suffix {suffix!r}; use .txt, .jsonl or .parquet."
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files and all(p.suffix.lower() == ".txt" for p in files):
            return ((i, files[i].read_text(encoding="utf-8")) for i in range(start, len(files)))
        # A folder of .jsonl/.parquet files is a dataset repository: the same call as a Hub name.
        return _column(_hf_stream(str(path), cfg), cfg, start)
    if path.suffix.lower() in (".txt", ".jsonl", ".json", ".parquet") or cfg.source.startswith(
        ("/", ".")
    ):
        raise ConfigError(f"data.source={cfg.source!r} does not exist.")
    return _column(_hf_stream(cfg.source, cfg), cfg, start)


def keyed_documents(cfg: DataConfig, start: int = 0) -> Iterator[tuple[int, str]]:
    """(key, text) of the configured source from document key `start` on; raises before any
    work if the source is empty or misnamed."""
    docs = _raw_documents(cfg, start)
    try:
        first = next(docs, None)
    except ConfigError:
        raise
    except Exception as e:  # a malformed file surfaces only when the stream is first read
        raise ConfigError(
            f"data.source={cfg.source!r} could not be read ({_first_line(e)})."
        ) from None
    if first is None:
        if start == 0:
            raise ConfigError(f"data.source={cfg.source!r} contains no text.")
        return iter([])
    return itertools.chain([first], docs)


def documents(cfg: DataConfig) -> Iterator[str]:
    """Documents of the configured source; raises before any work if it is empty or misnamed."""
    return (text for _, text in keyed_documents(cfg))


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
    keyed = enumerate(docs_tokens)
    for window, _ in pack_with_positions(keyed, context_size, bos_id, sep_id, bos):
        yield window


def pack_with_positions(
    docs_tokens: Iterable[tuple[int, list[int]]],
    context_size: int,
    bos_id: int | None,
    sep_id: int | None,
    bos: str = "window",
    first_offset: int = 0,
) -> Iterator[tuple[list[int], tuple[int, int]]]:
    """`pack_windows` over (key, tokens) documents, each window with the text position of its
    first text token: (document key, offset into that document's BOS + tokens + separator).
    Packing restarted at a window's position (that document, `first_offset`=offset) yields the
    same windows from there on: the position is all a resume needs to seek."""
    use_bos_window = bos == "window" and bos_id is not None
    n_text = context_size - 1 if use_bos_window else context_size
    buf: list[int] = []
    segs: deque[list[int]] = deque()  # [key, offset of its first token in buf, length]
    head = 0  # buf[0] is token `head` of segs[0]

    def position(p: int) -> tuple[int, int]:
        p += head
        for key, off, length in segs:
            if p < length:
                return key, off + p
            p -= length
        raise AssertionError("window start past the buffer")

    for n, (key, toks) in enumerate(docs_tokens):
        piece = [bos_id] if bos == "document" and bos_id is not None else []
        piece += toks
        if sep_id is not None:
            piece.append(sep_id)
        skip = first_offset if n == 0 else 0
        if len(piece) > skip:
            segs.append([key, skip, len(piece) - skip])
            buf.extend(piece[skip:])
        start = 0
        while len(buf) - start >= n_text:
            body = buf[start : start + n_text]
            where = position(start)
            start += n_text
            yield ([bos_id, *body] if use_bos_window else body), where
        del buf[:start]
        head += start
        while segs and head >= segs[0][2]:
            head -= segs[0][2]
            segs.popleft()


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
        self._docs = keyed_documents(cfg)  # opened now so a bad source fails before any work
        self.position: tuple[int, int] | None = None
        """text position (document key, offset) of the window `iter_from` yielded last."""

    def _token_lists(self, docs: Iterator[tuple[int, str]]) -> Iterator[tuple[int, list[int]]]:
        while batch := list(itertools.islice(docs, 64)):
            ids = self.tokenizer([t for _, t in batch], add_special_tokens=False, verbose=False)
            yield from zip([k for k, _ in batch], ids["input_ids"], strict=True)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return self.iter_from(0)

    def _index_in_part(self, i: int) -> int:
        """How many windows of this part come before global window i."""
        every = self.cfg.eval_every
        held = i // every if every > 0 else 0
        return {"train": i - held, "eval": held, "all": i}[self.cfg.part]

    def iter_from(
        self, start: int, position: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (global window index, tokens) for this rank, beginning at global index `start`.

        With `position` (the text position window `start` was yielded at, see `self.position`)
        the text before it is skipped unread instead of tokenized and packed again."""
        if position is not None:
            key, offset = position
            docs, i0, j = keyed_documents(self.cfg, key), start, self._index_in_part(start)
        else:
            docs, offset, i0, j = self._docs or keyed_documents(self.cfg), 0, 0, 0
        self._docs = None
        windows = pack_with_positions(
            self._token_lists(docs),
            self.cfg.context_size,
            self.bos_id,
            self.sep_id,
            self.cfg.bos,
            first_offset=offset,
        )
        part, every = self.cfg.part, self.cfg.eval_every
        # j: index within the part; ranks deal the windows of their part round-robin.
        for i, (window, where) in enumerate(windows, i0):
            if self.cfg.max_windows is not None and i >= self.cfg.max_windows:
                return
            held_out = every > 0 and i % every == every - 1
            if (part == "train" and held_out) or (part == "eval" and not held_out):
                continue
            if i >= start and j % self.world_size == self.rank:
                self.position = where
                yield i, torch.tensor(window, dtype=torch.long)
            j += 1
