"""ActivationStore: a bounded, shuffled stream of activation batches with exact resume.

    python -c "from sae.activations.store import demo; demo()"    # prints a few batch shapes on the default

Mixing scheme. The row stream from a source is cut into chunks of C = buffer_tokens / 2 rows.
Chunk j is split at random into halves a_j and b_j; group g = shuffle(b_{g-1} + a_g); groups are
emitted in order and cut into batches. So the buffer is refilled with C fresh rows each time
half of it (one group) is drained, every row is emitted exactly once, and each batch mixes rows
from 2C = buffer_tokens consecutive stream rows. Unlike a classic refill-when-half-empty buffer,
no row survives more than two refills: memory stays at 2 C = buffer_tokens rows (rows are
gathered straight from the two resident chunks into each batch, never copied in between), and because every
random draw is seeded by (seed, chunk index), the whole state is "group g, offset o, and where
chunk g-1 starts in the source". Resuming re-reads at most two chunks and yields, bit for bit,
the batches the uninterrupted run would have yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from sae.activations.sources import ActivationSource
from sae.config import ConfigError
from sae.config.schema import StoreConfig

STATE_VERSION = 1


class Chunk(NamedTuple):
    index: int
    rows: dict[str, torch.Tensor]
    meta: dict[str, torch.Tensor]
    cursor: int
    """source cursor of the piece the chunk starts in."""
    skip: int
    """rows of that piece before the chunk starts."""
    end: tuple[int, int]
    """(cursor, skip) of the row after the chunk's last row."""


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _len(d: dict[str, torch.Tensor]) -> int:
    return len(next(iter(d.values()))) if d else 0


def _alloc(like: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {
        k: torch.empty((n, *v.shape[1:]), dtype=v.dtype, device=v.device) for k, v in like.items()
    }


def fixed_chunks(
    source: ActivationSource, size: int, first_index: int = 0, cursor: int = 0, skip: int = 0
) -> Iterator[Chunk]:
    """Cut the source's row stream into chunks of exactly `size` rows (the last may be short).

    Each chunk is filled in place (no list of parts concatenated at the end), so a chunk costs
    its own size in memory and nothing more.
    """
    rows: dict[str, torch.Tensor] = {}
    meta: dict[str, torch.Tensor] = {}
    n, index, start, to_skip = 0, first_index, (cursor, skip), skip
    end = (cursor, skip)
    for piece in source.pieces(cursor):
        m = _len(piece.rows)
        off = min(to_skip, m)  # a skip may run past the first piece: it carries over
        to_skip -= off
        while off < m:
            if n == 0:
                start = (piece.cursor, off)
                rows, meta = _alloc(piece.rows, size), _alloc(piece.meta, size)
            take = min(size - n, m - off)
            for dst, src in ((rows, piece.rows), (meta, piece.meta)):
                for k, v in src.items():
                    dst[k][n : n + take] = v[off : off + take]
            n, off = n + take, off + take
            end = (piece.cursor, off)
            if n == size:
                yield Chunk(index, rows, meta, *start, end)
                rows, meta, n, index = {}, {}, 0, index + 1
    if n:
        cut = lambda d: {k: v[:n] for k, v in d.items()}
        yield Chunk(index, cut(rows), cut(meta), *start, end)


class _Group(NamedTuple):
    """Rows of a group without copying them: a virtual concatenation of index sets into chunks."""

    index: int
    parts: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]]
    """(rows, meta, row indices into them), in order."""

    def __len__(self) -> int:
        return sum(len(idx) for _, _, idx in self.parts)

    def take(self, pos: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        rows, meta = _alloc(self.parts[0][0], len(pos)), _alloc(self.parts[0][1], len(pos))
        start = 0
        for part_rows, part_meta, idx in self.parts:
            mask = (pos >= start) & (pos < start + len(idx))
            src = idx[pos[mask] - start]
            for dst, part in ((rows, part_rows), (meta, part_meta)):
                for k, v in part.items():
                    dst[k][mask] = v[src]
            start += len(idx)
        return rows, meta


def _generator(seed: int, index: int, salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + index) * 4 + salt)
    return g


class ActivationStore:
    """Yields `{hook: [batch, d]}` float32 batches, shuffled within a bounded buffer, as the
    source gave them: the store never rescales (the trainer's `ActivationScale` does)."""

    def __init__(self, source: ActivationSource, cfg: StoreConfig, state: dict | None = None):
        self.source, self.cfg = source, cfg
        self.chunk_rows = cfg.buffer_tokens // 2
        self._group, self._offset, self._rows = 0, 0, 0
        self._chunk_cursors: dict[int, tuple[int, int]] = {}
        self._last_meta: dict[str, torch.Tensor] = {}
        # Called with True before each chunk is read from the source and False after: a
        # live source runs the model then, and the progress bar says so.
        self.on_fill: Callable[[bool], None] | None = None
        # Called with the rows of the first chunk this store reads, in stream order, before any
        # batch of it is yielded: a fresh run's activation scale is estimated on them.
        self.on_first_chunk: Callable[[dict[str, torch.Tensor]], None] | None = None
        if state is not None:
            self._load_state(state)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able position: restoring it makes the next batch the one that would come next."""
        first = max(self._group - 1, 0)
        cursor, skip = self._chunk_cursors[first] if first else self._chunk_cursors.get(0, (0, 0))
        return {
            "version": STATE_VERSION,
            "source": self.source.describe(),
            "buffer_tokens": self.cfg.buffer_tokens,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            "rows_yielded": self._rows,
            "group": self._group,
            "group_offset": self._offset,
            "first_chunk": first,
            "first_chunk_cursor": cursor,
            "first_chunk_skip": skip,
            # Where that cursor is in the text (live sources): a resume seeks there instead of
            # re-reading and re-tokenizing everything before it.
            "first_chunk_position": self.source.position(cursor),
        }

    def _load_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"store state version {state.get('version')} is not {STATE_VERSION}.")
        for key in ("buffer_tokens", "batch_size", "seed"):
            if state[key] != getattr(self.cfg, key):
                raise ConfigError(
                    f"cannot resume: store.{key}={getattr(self.cfg, key)} but the saved run used "
                    f"{state[key]}."
                )
        if state["source"] != self.source.describe():
            raise ConfigError("cannot resume: the activation source differs from the saved run's.")
        self._group, self._offset, self._rows = (
            state["group"],
            state["group_offset"],
            state["rows_yielded"],
        )
        self._chunk_cursors = {
            state["first_chunk"]: (state["first_chunk_cursor"], state["first_chunk_skip"])
        }
        self.source.seek(state["first_chunk_cursor"], state.get("first_chunk_position"))

    @property
    def rows_yielded(self) -> int:
        return self._rows

    @property
    def last_meta(self) -> dict[str, torch.Tensor]:
        """Token id, window and position of each row of the last batch (live and cache sources)."""
        return self._last_meta

    # -- stream ----------------------------------------------------------------------------
    def _groups(self) -> Iterator[_Group]:
        first = max(self._group - 1, 0)
        cursor, skip = self._chunk_cursors.get(first, (0, 0))
        seed = self.cfg.seed
        prev: tuple[dict, dict, torch.Tensor] | None = None  # the previous chunk and its half b
        last = first - 1
        for chunk in self._announced(
            fixed_chunks(self.source, self.chunk_rows, first, cursor, skip)
        ):
            self._chunk_cursors[chunk.index] = (chunk.cursor, chunk.skip)
            self._chunk_cursors[chunk.index + 1] = chunk.end  # known before chunk + 1 is read
            self._chunk_cursors.pop(chunk.index - 3, None)
            if self.on_first_chunk is not None:
                self.on_first_chunk(chunk.rows)
                self.on_first_chunk = None
            n = _len(chunk.rows)
            perm = torch.randperm(n, generator=_generator(seed, chunk.index, 0))
            a, b = perm[: n // 2], perm[n // 2 :]
            if chunk.index == 0 or prev is not None:
                parts = ([prev] if prev is not None else []) + [(chunk.rows, chunk.meta, a)]
                yield _Group(chunk.index, parts)
                parts = None  # the frame must not pin chunk g - 1 while chunk g + 1 is read
            prev, last = (chunk.rows, chunk.meta, b), chunk.index
        if prev is not None:
            yield _Group(last + 1, [prev])

    def _announced(self, chunks: Iterator) -> Iterator:
        while True:
            if self.on_fill is not None:
                self.on_fill(True)
            chunk = next(chunks, None)
            if self.on_fill is not None:
                self.on_fill(False)
            if chunk is None:
                return
            yield chunk

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        B = self.cfg.batch_size
        rows: list[dict] = []  # the parts gathered for the batch being built, and their meta
        meta: list[dict] = []
        n, g = 0, self._group
        groups = self._groups()
        while (group := next(groups, None)) is not None:
            g = group.index
            if g >= self._group:
                size = len(group)
                perm = torch.randperm(size, generator=_generator(self.cfg.seed, g, 1))
                off = self._offset if g == self._group else 0
                while off < size:
                    take = min(B - n, size - off)
                    part_rows, part_meta = group.take(perm[off : off + take])
                    rows.append(part_rows)
                    meta.append(part_meta)
                    n, off = n + take, off + take
                    if n == B:
                        yield self._emit(rows, meta, n, g, off, size)
                        rows, meta, n = [], [], 0
            group = None  # drop the old chunk before the generator reads the next one
        if n:  # the short last batch; afterwards the position is past the final group
            yield self._emit(rows, meta, n, g, 1, 1)

    def _emit(self, rows: list[dict], meta: list[dict], n: int, g: int, off: int, size: int):
        """The batch of the `n` rows gathered in `rows` (and `meta`), ending at `off` of group `g`
        of `size` rows."""
        self._last_meta = _cat(meta)
        self._rows += n
        # Position of the next row: the rest of group g, or the start of group g + 1.
        self._group, self._offset = (g, off) if off < size else (g + 1, 0)
        return _cat(rows)


def demo() -> None:
    from sae.activations.sources import LiveSource
    from sae.config.schema import DataConfig, ModelConfig

    cfg = StoreConfig(buffer_tokens=16_384, batch_size=1024)
    store = ActivationStore(LiveSource(ModelConfig(), DataConfig(max_windows=256), cfg), cfg)
    for i, batch in enumerate(store):
        print(i, {h: tuple(x.shape) for h, x in batch.items()})
