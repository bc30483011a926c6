"""Activation sources: live model activations, a harvested cache, or a plain matrix file.

Each source yields `Piece`s: consecutive activation rows (special tokens already masked out)
tagged with an integer cursor from which `pieces(cursor)` restarts at exactly that piece. That
cursor is all the store and the harvester need to resume a stream exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from sae.activations.passfile import PassFile, Spilled
from sae.config import ConfigError
from sae.config.schema import DataConfig, ModelConfig, StoreConfig
from sae.io.validate import (
    SKIP_HINT,
    NonFiniteRows,
    check_matrix_dtype,
    check_matrix_values,
    check_rows_finite,
    nonfinite_mask,
)

MATRIX_HOOK = "activations"
"""hook name of the single tensor in a plain `[tokens, d_in]` matrix file."""

_FILE_PIECE_ROWS = 16_384
_POSITIONS_KEPT = 4096
"""text positions of this many recent live pieces are kept for the store's and harvester's states."""
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

MEMO_BYTES = 2 * 2**30
"""Largest part of a first pass (rows + per-row metadata) a training run's live source keeps in
memory for later passes; the rest goes to a temporary file (`MEMO_DISK_SHARE`)."""
MEMO_DISK_SHARE = 0.5
"""Largest share of the temporary folder's free space (divided among the ranks) that a first
pass spills to once it outgrows `MEMO_BYTES`; a pass larger than that is not kept, and later
passes run the model again. Half, so that checkpoints and other programs keep room."""


class Piece(NamedTuple):
    cursor: int
    """where `pieces(cursor)` restarts with this very piece (window index, or row index)."""
    rows: dict[str, torch.Tensor]
    """hook name -> activations [n, d]."""
    meta: dict[str, torch.Tensor]
    """per-row token id, window index and position (live and cache sources; empty otherwise)."""


class SkipsNonFinite:
    """Rows holding NaN or infinity, met as pieces are read: refused in one line (the default)
    or, with `skip_nonfinite`, dropped from the piece and counted per piece cursor (so a piece
    read again, on a later pass or a resume, is counted once)."""

    skip_nonfinite: bool = False
    skipped: dict[int, int] | None = None

    def screen(self, cursor: int, rows, meta, message: Callable[[torch.Tensor], str]):
        """`rows`, `meta` without their non-finite rows; `message(bad)` is the refusal."""
        bad = nonfinite_mask(rows)
        if bad is None:
            return rows, meta
        if not self.skip_nonfinite:
            raise NonFiniteRows(message(bad))
        if self.skipped is None:
            self.skipped = {}
        self.skipped[cursor] = int(bad.sum())
        keep = ~bad
        return {k: v[keep] for k, v in rows.items()}, {k: v[keep] for k, v in meta.items()}

    @property
    def skipped_rows(self) -> int:
        """Rows dropped so far for holding NaN or infinity (`skip_nonfinite`)."""
        return sum((self.skipped or {}).values())


class ActivationSource(Protocol):
    """What the store, the trainer and the harvester ask of a source. Every source here
    subclasses it, so the methods with a body are defaults that only some sources override
    (live sources seek and hold out windows; caches check their model)."""

    hooks: list[str]
    """hook names served, in order."""
    d: dict[str, int]
    """hook name -> row width."""

    def pieces(self, cursor: int = 0) -> Iterator[Piece]: ...

    def describe(self) -> dict: ...

    def rank_rows(self) -> int:
        """Rows this rank reads in one pass (sizes the LR schedule of a run without
        total_tokens)."""
        ...

    def position(self, cursor: int) -> list[int] | None:
        """Where `cursor` is in the text, for `seek` (sources that can seek); else None."""
        return None

    def seek(self, cursor: int, position: list[int] | None) -> None:
        """Let `pieces(cursor)` start at `position` (from `position`) without re-reading."""

    def held_out(
        self, store_cfg: StoreConfig, rank: int = 0, world_size: int = 1
    ) -> ActivationSource | None:
        """The source's own held-out rows (live: the held-out windows), or None."""
        return None

    def check_matches(self, model_name: str, hooks: list[str]) -> None:
        """Refuse (ConfigError) a source made from another model or lacking a hook."""

    @property
    def runs_model(self) -> bool:
        """True while reading runs a model forward (the progress bar says so)."""
        return False

    @property
    def skipped_rows(self) -> int:
        """Rows dropped for holding NaN or infinity (`skip_nonfinite`)."""
        return 0


class LiveSource(SkipsNonFinite, ActivationSource):
    """Run a Hugging Face model over token windows; rows are captured at `model_cfg.hooks`.
    Rows the model computes as NaN or infinite are refused (or dropped: `skip_nonfinite`)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        store_cfg: StoreConfig,
        rank: int = 0,
        world_size: int = 1,
        model=None,
        tokenizer=None,
        memo_bytes: int = 0,
        memo_disk_share: float = 0.0,
    ):
        from sae.activations.capture import ActivationCapture, load_model, max_positions
        from sae.activations.text import TokenWindows

        if model is None:
            model, tokenizer = load_model(model_cfg)
        self.model_cfg, self.data_cfg, self.store_cfg = model_cfg, data_cfg, store_cfg
        self.skip_nonfinite = store_cfg.skip_nonfinite
        self.hooks = list(model_cfg.hooks)
        self.capture = ActivationCapture(model, self.hooks)  # validates hooks before any work
        limit = max_positions(model)
        if limit is not None and data_cfg.context_size > limit:
            raise ConfigError(
                f"data.context_size={data_cfg.context_size} is longer than the model's maximum of "
                f"{limit} positions."
            )
        self.windows = TokenWindows(data_cfg, tokenizer, rank, world_size)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.bos_id = self.windows.bos_id
        self._positions: dict[int, tuple[int, int]] = {}
        probe = self.capture(torch.full((1, 2), self.bos_id or 0, dtype=torch.long))
        self.d = {h: int(v.shape[-1]) for h, v in probe.items()}
        # Multi-pass runs: the first full pass keeps its pieces (as yielded, float32, so a later
        # pass is bit-identical to recomputing it) in memory up to `memo_bytes`, then in a
        # temporary file up to `memo_disk_share` of its free space; later passes read them
        # instead of running the model again. Zeros (single-pass readers) keep nothing.
        self.memo_bytes, self.memo_disk_share = memo_bytes, memo_disk_share / world_size
        self._memo: list[Piece | Spilled] | None = None
        self._memo_at: dict[int, int] = {}
        self._pass_file: PassFile | None = None

    def keep_mask(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        """True for rows that enter the stream: BOS/position 0 and special tokens are dropped."""
        keep = torch.ones_like(tokens_BT, dtype=torch.bool)
        if self.store_cfg.exclude_bos:
            keep[:, 0] = False
            if self.bos_id is not None:
                keep &= tokens_BT != self.bos_id
        if self.store_cfg.exclude_special:
            keep &= ~torch.isin(tokens_BT, self.special)
        return keep

    def position(self, cursor: int) -> list[int] | None:
        """Text position of the piece starting at `cursor` (for `seek`), if still remembered."""
        where = self._positions.get(cursor)
        return list(where) if where is not None else None

    def seek(self, cursor: int, position: list[int] | None) -> None:
        """Let `pieces(cursor)` start at this text position instead of re-reading the text."""
        if position is not None:
            self._positions[cursor] = (int(position[0]), int(position[1]))

    @property
    def memoized(self) -> bool:
        """True once a whole pass is held in memory (later passes run no model forward)."""
        return self._memo is not None

    def pieces(self, cursor: int = 0) -> Iterator[Piece]:
        if self._memo is not None and cursor in self._memo_at:
            for entry in self._memo[self._memo_at[cursor] :]:
                yield Piece(*self._pass_file.get(entry)) if isinstance(entry, Spilled) else entry
            return
        if (
            self._memo is not None
            or cursor != 0
            or (self.memo_bytes, self.memo_disk_share) == (0, 0)
        ):
            yield from self._forward_pieces(cursor)
            return
        kept: list[Piece | Spilled] | None = []
        used, spill = 0, None
        for piece in self._forward_pieces(0):
            if kept is not None:
                size = sum(v.numel() * v.element_size() for v in piece.rows.values())
                size += sum(v.numel() * v.element_size() for v in piece.meta.values())
                if spill is None and used + size <= self.memo_bytes:
                    kept.append(piece)
                    used += size
                else:
                    if spill is None and self.memo_disk_share > 0:
                        spill = PassFile(self.memo_disk_share)
                    entry = spill.put(*piece) if spill is not None else None
                    if entry is None:  # too large to keep: later passes run the model
                        kept = spill = None
                    else:
                        kept.append(entry)
            yield piece
        if kept is not None:  # the pass ran to its end: later passes replay it
            self._memo, self._pass_file = kept, spill
            self._memo_at = {p.cursor: i for i, p in enumerate(kept)}

    def _forward_pieces(self, cursor: int) -> Iterator[Piece]:
        it = self.windows.iter_from(cursor, self._positions.get(cursor))
        batch_size = self.model_cfg.batch_windows
        while True:
            first = next(it, None)
            if first is None:
                return
            # The store and the harvester save positions of recent pieces' starts only.
            self._positions[first[0]] = self.windows.position
            while len(self._positions) > _POSITIONS_KEPT:
                del self._positions[next(iter(self._positions))]
            batch = [first, *(w for _, w in zip(range(batch_size - 1), it, strict=False))]
            idx = [i for i, _ in batch]
            tokens_BT = torch.stack([w for _, w in batch])
            acts = self.capture(tokens_BT)
            keep_BT = self.keep_mask(tokens_BT)
            T = tokens_BT.shape[1]
            window_BT = torch.tensor(idx, dtype=torch.long)[:, None].expand(-1, T)
            pos_BT = torch.arange(T, dtype=torch.int32)[None, :].expand(len(idx), -1)
            rows = {h: a[keep_BT.to(a.device)].float().cpu() for h, a in acts.items()}
            meta = {
                "tokens": tokens_BT[keep_BT].to(torch.int32),
                "window": window_BT[keep_BT],
                "position": pos_BT[keep_BT],
            }
            rows, meta = self.screen(idx[0], rows, meta, partial(self._refusal, meta))
            yield Piece(idx[0], rows, meta)

    def _refusal(self, meta: dict[str, torch.Tensor], bad: torch.Tensor) -> str:
        i = int(bad.nonzero()[0, 0])
        w, at = int(meta["window"][i]), int(meta["position"][i])
        return (
            f"model {self.model_cfg.name!r} computed NaN or infinite activations at "
            f"{', '.join(self.hooks)} for {int(bad.sum()):,} of {len(bad):,} tokens (the first "
            f"in window {w}, position {at}); {SKIP_HINT}."
        )

    def held_out(self, store_cfg: StoreConfig, rank: int = 0, world_size: int = 1) -> LiveSource:
        """The held-out windows (`data.part='eval'`) through the same, already loaded model."""
        data = dataclasses.replace(self.data_cfg, part="eval")
        model, tokenizer = self.capture.model, self.windows.tokenizer
        return LiveSource(self.model_cfg, data, store_cfg, rank, world_size, model, tokenizer)

    @property
    def runs_model(self) -> bool:
        return not self.memoized

    def rank_rows(self) -> int:
        """Rows this rank's windows yield in one pass (tokenizing only, no forward pass)."""
        if self.data_cfg.source != "builtin" and not Path(self.data_cfg.source).exists():
            raise ConfigError(
                f"data.source={self.data_cfg.source!r} is streamed from the Hub; set total_tokens "
                "(the length of one pass cannot be known in advance)."
            )
        return sum(int(self.keep_mask(w[None]).sum()) for _, w in self.windows.iter_from(0))

    def describe(self) -> dict:
        return {
            "kind": "live",
            "model": self.model_cfg.name,
            "hooks": self.hooks,
            "d": self.d,
            "data": vars(self.data_cfg),
            "batch_windows": self.model_cfg.batch_windows,
            "exclude_bos": self.store_cfg.exclude_bos,
            "exclude_special": self.store_cfg.exclude_special,
        }


class _RowFile(SkipsNonFinite, ActivationSource):
    """Fixed-size row pieces over a row-indexable reader; rank r takes pieces j % world == r.
    Each piece read is screened for non-finite rows (`SkipsNonFinite`): the part of the file
    not scanned when it was opened (`check_rows_finite`) is checked here, as training reads it."""

    rank: int = 0
    world_size: int = 1
    n_rows: int = 0
    label: str = "activation file"

    def read(self, a: int, b: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def rank_rows(self) -> int:
        """Rows this rank reads in one pass."""
        starts = range(
            self.rank * _FILE_PIECE_ROWS, self.n_rows, self.world_size * _FILE_PIECE_ROWS
        )
        return sum(min(a + _FILE_PIECE_ROWS, self.n_rows) - a for a in starts)

    def pieces(self, cursor: int = 0) -> Iterator[Piece]:
        start = cursor - cursor % _FILE_PIECE_ROWS
        for a in range(start, self.n_rows, _FILE_PIECE_ROWS):
            if (a // _FILE_PIECE_ROWS) % self.world_size != self.rank:
                continue
            b = min(a + _FILE_PIECE_ROWS, self.n_rows)
            rows, meta = self.read(a, b)
            rows, meta = self.screen(a, rows, meta, partial(self._refusal, a, b))
            yield Piece(a, rows, meta)

    def _refusal(self, a: int, b: int, bad: torch.Tensor) -> str:
        first = a + int(bad.nonzero()[0, 0])
        return (
            f"{self.label}: {int(bad.sum()):,} of rows {a:,} to {b - 1:,} hold NaN or infinite "
            f"values (the first is row {first:,}); {SKIP_HINT}."
        )

    def screen_start(self) -> None:
        """Refuse non-finite rows now, before any output (`check_rows_finite`: the whole
        source when it is small enough), unless they are to be skipped."""
        if not self.skip_nonfinite:
            check_rows_finite(
                lambda a, b: self.read(a, b)[0], self.n_rows, sum(self.d.values()), self.label
            )


class MatrixSource(_RowFile):
    """A plain `[tokens, d_in]` matrix in .npy (memory-mapped) or .safetensors."""

    def __init__(
        self, path: str | Path, rank: int = 0, world_size: int = 1, skip_nonfinite: bool = False
    ):
        self.path, self.rank, self.world_size = Path(path), rank, world_size
        self.skip_nonfinite, self.label = skip_nonfinite, f"activation file {str(self.path)!r}"
        if not self.path.is_file():
            raise ConfigError(f"activation file {str(self.path)!r} does not exist.")
        suffix = self.path.suffix.lower()
        if suffix == ".npy":
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError):  # a pickle, an object array, not .npy at all
                raise ConfigError(
                    f"activation file {str(self.path)!r} is not a plain .npy array of numbers "
                    "(pickled or object data is never loaded); save a float matrix with np.save."
                ) from None
            if not isinstance(self._array, np.ndarray):
                raise ConfigError(
                    f"activation file {str(self.path)!r} is an .npz archive; save one matrix with "
                    "np.save."
                )
            shape, dtype = self._array.shape, str(self._array.dtype)
        elif suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                self._file = safe_open(str(self.path), framework="pt")
            except (SafetensorError, OSError) as e:
                raise ConfigError(
                    f"activation file {str(self.path)!r} is not a readable safetensors file ({e})."
                ) from None
            keys = list(self._file.keys())
            if len(keys) != 1 and MATRIX_HOOK not in keys:
                raise ConfigError(
                    f"{str(self.path)!r} holds tensors {keys}; a matrix file must hold one tensor "
                    f"or one named {MATRIX_HOOK!r}."
                )
            self._key = MATRIX_HOOK if MATRIX_HOOK in keys else keys[0]
            view = self._file.get_slice(self._key)
            shape, dtype = tuple(view.get_shape()), _SAFETENSORS_DTYPES.get(view.get_dtype(), "?")
            dtype = dtype if dtype != "?" else view.get_dtype()
        else:
            raise ConfigError(
                f"activation file {str(self.path)!r} must end in .npy or .safetensors."
            )
        if len(shape) != 2 or shape[0] == 0:
            raise ConfigError(
                f"activation file {str(self.path)!r} has shape {list(shape)}; expected [tokens, d_in]."
            )
        check_matrix_dtype(dtype, self.path)
        self.n_rows, self.hooks, self.d = int(shape[0]), [MATRIX_HOOK], {MATRIX_HOOK: int(shape[1])}
        check_matrix_values(lambda a, b: self.read(a, b)[0][MATRIX_HOOK], self.n_rows, self.path)
        self.screen_start()

    def read(self, a: int, b: int):
        if self.path.suffix.lower() == ".npy":
            x = torch.from_numpy(np.array(self._array[a:b]))  # copy out of the memory map
        else:
            x = self._file.get_slice(self._key)[a:b]
        return {MATRIX_HOOK: x.float()}, {}  # float16/bfloat16/float64 files train in float32

    def describe(self) -> dict:
        return {"kind": "matrix", "path": str(self.path), "n_tokens": self.n_rows, "d": self.d}


class CacheSource(_RowFile):
    """An activation cache written by `sae harvest`: shards + manifest, in a local folder
    (memory-mapped reads) or at any fsspec URL (one shard in memory at a time)."""

    def __init__(
        self,
        path: str | Path,
        hooks: list[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
        verify: bool = True,
        skip_nonfinite: bool = False,
    ):
        from sae.activations.cachefs import CacheLocation

        self.path, self.rank, self.world_size, self.verify = path, rank, world_size, verify
        self.skip_nonfinite, self.label = skip_nonfinite, f"activation cache {str(path)!r}"
        self.loc = CacheLocation(path)
        if not self.loc.exists("manifest.json"):
            raise ConfigError(f"{str(self.path)!r} is not an activation cache (no manifest.json).")
        self.manifest = self.loc.read_json("manifest.json")
        if not self.manifest.get("complete", False):
            raise ConfigError(
                f"activation cache {str(self.path)!r} is unfinished; run `sae harvest` again to "
                "complete it."
            )
        available = list(self.manifest["hooks"])
        self.hooks = list(hooks) if hooks else available
        for hook in self.hooks:
            if hook not in available:
                raise ConfigError(
                    f"hook {hook!r} is not in activation cache {str(self.path)!r}; it holds {available}."
                )
        self.d = {h: int(self.manifest["hooks"][h]["d"]) for h in self.hooks}
        self.shards = self.manifest["shards"]
        self.starts = np.cumsum([0] + [s["n_tokens"] for s in self.shards])
        self.n_rows = int(self.starts[-1])
        self._open: dict[int, object] = {}
        if self.loc.local is not None:  # a remote cache is screened as it is read
            self.screen_start()

    def _shard(self, i: int):
        if i not in self._open:
            entry = self.shards[i]
            handle = self.loc.open_tensors(entry["file"], entry["sha256"] if self.verify else None)
            if self.loc.local is None:
                self._open.clear()  # remote shards live in memory: keep only the current one
            self._open[i] = handle
        return self._open[i]

    def read(self, a: int, b: int):
        parts: dict[str, list[torch.Tensor]] = {}
        i = int(np.searchsorted(self.starts, a, side="right") - 1)
        while a < b:
            lo, hi = a - self.starts[i], min(b, self.starts[i + 1]) - self.starts[i]
            f = self._shard(i)
            for key in [f"acts.{h}" for h in self.hooks] + ["tokens", "window", "position"]:
                parts.setdefault(key, []).append(f.get_slice(key)[int(lo) : int(hi)])
            a, i = int(self.starts[i] + hi), i + 1
        rows = {h: torch.cat(parts[f"acts.{h}"]).float() for h in self.hooks}
        meta = {k: torch.cat(parts[k]) for k in ("tokens", "window", "position")}
        return rows, meta

    def check_matches(self, model_name: str, hooks: list[str]) -> None:
        """Refuse a cache made from another model, or lacking a hook the config asks for."""
        made_with = self.manifest["model"]
        if made_with != model_name:
            raise ConfigError(
                f"activation cache {str(self.path)!r} was made with model {made_with!r} but "
                f"model.name={model_name!r}; pass --model.name {made_with} or another cache."
            )
        for hook in hooks:
            if hook not in self.manifest["hooks"]:
                raise ConfigError(
                    f"hook {hook!r} is not in activation cache {str(self.path)!r}; it holds "
                    f"{list(self.manifest['hooks'])}."
                )

    def describe(self) -> dict:
        m = self.manifest
        return {
            "kind": "cache",
            "path": str(self.path),
            "model": m["model"],
            "hooks": self.hooks,
            "d": self.d,
            "n_tokens": self.n_rows,
            "data_hash": m["data_hash"],
        }


SYNTHETIC_HOOK = "synthetic"
"""hook name of the synthetic ground-truth stream (`--activations synthetic`)."""

_HELD_OUT_PIECE = 10**9
"""held-out synthetic samples come from generator indices far past any training stream."""


class SyntheticSource(_RowFile):
    """Sparse combinations of a known dictionary, `n_rows` long, deterministic
    (docs/methods.md#synthetic-generator)."""

    def __init__(
        self, cfg, n_rows: int, held_out: bool = False, rank: int = 0, world_size: int = 1
    ):
        from sae.analysis.synthetic import SyntheticData

        self.cfg, self.n_rows, self.held_out = cfg, n_rows, held_out
        self.rank, self.world_size = rank, world_size
        self.data = SyntheticData(cfg)
        self.hooks, self.d = [SYNTHETIC_HOOK], {SYNTHETIC_HOOK: cfg.d_in}
        self.label = "synthetic data"

    def read(self, a: int, b: int):
        # Pieces are generated whole, so batch j depends only on (seed, j): resumable anywhere.
        j = a // _FILE_PIECE_ROWS + (_HELD_OUT_PIECE if self.held_out else 0)
        x = self.data.sample(j, _FILE_PIECE_ROWS).x_BD
        return {SYNTHETIC_HOOK: x[a % _FILE_PIECE_ROWS : a % _FILE_PIECE_ROWS + b - a]}, {}

    def describe(self) -> dict:
        return {
            "kind": "synthetic",
            "config": dataclasses.asdict(self.cfg),
            "n_tokens": self.n_rows,
            "held_out": self.held_out,
        }


def open_source(
    activations: str | None,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    store_cfg: StoreConfig,
    rank: int = 0,
    world_size: int = 1,
    passes: bool = False,
) -> ActivationSource:
    """A cache folder or matrix file when `activations` is given, else live model activations;
    `passes`: the reader may take several passes, so a live source keeps its first one."""
    if activations == "synthetic":
        raise ConfigError(
            "the synthetic source is opened by the trainer from its `synthetic` section."
        )
    if activations is None:
        keep = (MEMO_BYTES, MEMO_DISK_SHARE) if passes else (0, 0.0)
        return LiveSource(model_cfg, data_cfg, store_cfg, rank, world_size, None, None, *keep)
    path = Path(activations)
    skip = store_cfg.skip_nonfinite
    if "://" in activations or path.is_dir():  # a cache folder or any fsspec URL
        where = activations if "://" in activations else path
        return CacheSource(where, None, rank, world_size, skip_nonfinite=skip)
    return MatrixSource(path, rank, world_size, skip)
