"""Read a records folder (and its latents table) back as plain per-latent values for the exports.

from sae.export.view import Records
r = Records.open("reports/rec/<sae>/records")
r.info.tokens, r.info.activations   # records.json as its typed record (sae.io.records.RecordsInfo)
r.top_contexts(42), r.bins(42), r.histogram(42), r.logits(42), r.correlated(42, "latent")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import load_file

from sae.config import ConfigError
from sae.io.records import RecordsInfo


class Records:
    """Records tensors (numpy), records.json, and the latents table of one SAE."""

    def __init__(self, folder: Path, t: dict[str, np.ndarray], info: RecordsInfo, table):
        self.folder, self.t, self.info, self.table = folder, t, info, table
        strings = {int(k): v for k, v in info.token_strings.items()}
        size = max(strings, default=-1) + 1
        self.vocab = np.array([strings.get(i, f"<{i}>") for i in range(size)], dtype=object)
        self.strings = strings
        self.before = info.context.before

    @classmethod
    def open(cls, folder: str | Path) -> Records:
        folder = Path(folder)
        if (
            not (folder / RecordsInfo.FILE).is_file()
            or not (folder / "records.safetensors").is_file()
        ):
            raise ConfigError(f"{str(folder)!r} holds no complete feature records.")
        info = RecordsInfo.read(folder)
        table_path = folder.parent / "latents.parquet"
        table = pq.read_table(table_path).to_pandas() if table_path.is_file() else None
        return cls(folder, load_file(str(folder / "records.safetensors")), info, table)

    @property
    def d_sae(self) -> int:
        return self.info.d_sae

    def token(self, i: int) -> str:
        return self.strings.get(int(i), f"<{int(i)}>")

    def _context(self, tok_W: np.ndarray, acts_W: np.ndarray, value: float, pos_id: int) -> dict:
        keep = tok_W >= 0
        first = int(np.argmax(keep)) if keep.any() else 0
        ids = tok_W[keep]
        return {
            "ids": ids,
            "tokens": self.vocab[ids].tolist(),
            "values": np.round(acts_W[keep].astype(np.float64), 4).tolist(),
            "qualifying_token_index": self.before - first,
            "value": float(value),
            "position_id": int(pos_id),
        }

    def top_contexts(self, m: int) -> list[dict]:
        t = self.t
        return [
            self._context(t["top_tok"][m, j], t["top_acts"][m, j], t["top_val"][m, j], i)
            for j, i in enumerate(t["top_id"][m])
            if i >= 0
        ]

    def bins(self, m: int) -> list[dict]:
        """Equal-mass bins, highest first: {bin_min, bin_max, bin_contains, samples}."""
        t = self.t
        n = max(self.info.tokens, 1)
        out = []
        for j in range(t["bin_counts"].shape[1] - 1, -1, -1):
            count = int(t["bin_counts"][m, j])
            if count == 0:
                continue
            sel = np.flatnonzero(t["res_bin"][m] == j)
            out.append(
                {
                    "bin_min": float(t["bin_edges"][m, j]),
                    "bin_max": float(t["bin_edges"][m, j + 1]),
                    "bin_contains": count / n,
                    "count": count,
                    "samples": [
                        self._context(
                            t["res_tok"][m, r],
                            t["res_acts"][m, r],
                            t["res_val"][m, r],
                            t["res_id"][m, r],
                        )
                        for r in sel
                    ],
                }
            )
        return out

    def histogram(self, m: int, bars: int = 40) -> dict[str, list[float]]:
        """Nonzero activations in `bars` equal-width bars over (0, max]: {values (centres),
        heights}. Each log-spaced histogram bin is placed by its geometric centre (a rebinning
        of the records' 40-per-decade histogram)."""
        t = self.t
        hi = float(t["max_activation"][m])
        counts = t["hist_counts"][m]
        if hi <= 0 or counts.sum() == 0:
            return {"values": [], "heights": []}
        e = t["hist_edges"]
        centre = np.minimum(np.sqrt(e[:-1] * e[1:]), hi)
        b = np.clip((centre / hi * bars).astype(int), 0, bars - 1)
        heights = np.bincount(b, weights=counts, minlength=bars)
        values = (np.arange(bars) + 0.5) * hi / bars
        return {"values": values.round(4).tolist(), "heights": heights.astype(int).tolist()}

    def logits(self, m: int) -> dict[str, Any] | None:
        t = self.t
        if "logit_top_id" not in t:
            return None
        edges = t["logit_hist_edges"][m]
        return {
            "pos": [
                (self.token(i), float(v))
                for i, v in zip(t["logit_top_id"][m], t["logit_top_val"][m], strict=True)
            ],
            "neg": [
                (self.token(i), float(v))
                for i, v in zip(t["logit_bot_id"][m], t["logit_bot_val"][m], strict=True)
            ],
            "hist_values": ((edges[:-1] + edges[1:]) / 2).round(4).tolist(),
            "hist_heights": t["logit_hist_counts"][m].astype(int).tolist(),
        }

    def correlated(self, m: int, kind: str) -> list[tuple[int, float, float]]:
        """(index, Pearson r, cosine) of the most correlated neurons ('neuron') or latents."""
        t = self.t
        if f"corr_{kind}_idx" not in t:
            return []
        return [
            (int(i), float(r), float(c))
            for i, r, c in zip(
                t[f"corr_{kind}_idx"][m],
                t[f"corr_{kind}_r"][m],
                t[f"corr_{kind}_cos"][m],
                strict=True,
            )
        ]

    def row(self, m: int) -> dict[str, Any]:
        """This latent's row of latents.parquet (records columns at least)."""
        if self.table is None:
            t = self.t
            return {
                "latent": m,
                "frequency": float(t["frequency"][m]),
                "max_activation": float(t["max_activation"][m]),
            }
        return {k: _plain(v) for k, v in self.table.iloc[m].items()}


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
