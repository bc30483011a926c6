"""A pass of activation pieces kept on disk for later passes (see `LiveSource.pieces`)."""

from __future__ import annotations

import os
import tempfile
from typing import NamedTuple

import numpy as np
import torch


class Spilled(NamedTuple):
    cursor: int
    layout: list[tuple[str, str, np.dtype, tuple[int, ...], int]]
    """(group, name, dtype, shape, byte offset) of each tensor of the piece in the pass file."""


class PassFile:
    """Pieces of one pass appended to an unnamed temporary file: the OS deletes it when the last
    handle closes or the process ends, even on SIGKILL, so no run leaves one behind. Rows are
    stored as yielded (float32), so a replayed pass is bit-identical to recomputing it."""

    def __init__(self, share: float):
        self.file = tempfile.TemporaryFile(prefix="sae-pass-")
        st = os.fstatvfs(self.file.fileno())
        self.budget = int(st.f_bavail * st.f_frsize * share)
        self.size = 0

    def put(
        self, cursor: int, rows: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]
    ) -> Spilled | None:
        """Append a piece (a `Piece`'s fields); None when it would pass the budget or the disk
        refuses it."""
        arrays = [("rows", h, v.contiguous().numpy()) for h, v in rows.items()]
        arrays += [("meta", k, v.contiguous().numpy()) for k, v in meta.items()]
        if self.size + sum(a.nbytes for _, _, a in arrays) > self.budget:
            return None
        layout = []
        try:
            self.file.seek(self.size)
            for group, name, a in arrays:
                self.file.write(a.tobytes())
                layout.append((group, name, a.dtype, a.shape, self.size))
                self.size += a.nbytes
            self.file.flush()
        except OSError:  # disk full or gone: this pass is not kept
            return None
        return Spilled(cursor, layout)

    def get(self, spilled: Spilled) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(cursor, rows, meta) of a piece `put` stored: the fields of a `Piece`."""
        parts: dict[str, dict[str, torch.Tensor]] = {"rows": {}, "meta": {}}
        for group, name, dtype, shape, offset in spilled.layout:
            a = np.empty(shape, dtype)
            if a.nbytes:
                self.file.seek(offset)
                self.file.readinto(a)
            parts[group][name] = torch.from_numpy(a)
        return spilled.cursor, parts["rows"], parts["meta"]
