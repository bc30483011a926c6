"""`latents.parquet`: one row per latent, one column per per-latent figure any suite computes.

    import pandas as pd; pd.read_parquet("reports/x/<sae>/latents.parquet")   # or polars, duckdb

Lives in each SAE's report subfolder (REPORT/<sae>/latents.parquet, beside report.json's
folder). Column `latent` is the index; every suite that computes a per-latent figure writes all
its columns in one call, which replaces every column that suite wrote before (a rerun that no
longer computes a column, such as interpret without the LLM, drops it rather than leave a stale
one for the exports) and keeps other suites' columns (records: frequency, mean/max activation,
top tokens; capacity: capacity_geometric, capacity_usage_weighted, class_*, block; synthetic:
best true-feature match; interpret: interp_*).
The Parquet schema metadata `sae_columns` maps each column to the suite that wrote it.
Definitions: docs/methods.md#latents-table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sae.fsutil import atomic_write_parquet

TABLE_FILE = "latents.parquet"
_META_KEY = b"sae_columns"


def update_latents_table(
    path: str | Path, columns: dict[str, Sequence[Any] | np.ndarray], suite: str, d_sae: int
) -> Path:
    """Set `suite`'s columns to `columns` (each of length d_sae) in the table at `path`, written
    atomically: the suite's columns from an earlier run that are not in `columns` are dropped.

    A table of another length (another SAE written to the same report folder) is replaced."""
    path = Path(path)
    for name, col in columns.items():
        if len(col) != d_sae:
            raise ValueError(f"column {name!r} has {len(col)} rows; the SAE has {d_sae} latents")
    owners: dict[str, str] = {}
    table = None
    if path.is_file():
        old = pq.read_table(path)
        if old.num_rows == d_sae and "latent" in old.column_names:
            table = old
            owners = json.loads((old.schema.metadata or {}).get(_META_KEY, b"{}"))
    if table is None:
        table = pa.table({"latent": pa.array(np.arange(d_sae, dtype=np.int64))})
        owners = {"latent": "index"}
    stale = [n for n, who in owners.items() if who == suite and n not in columns]
    table = table.drop_columns([n for n in stale if n in table.column_names])
    owners = {n: who for n, who in owners.items() if n not in stale}
    for name, col in columns.items():
        arr = pa.array(col.tolist() if isinstance(col, np.ndarray) and col.dtype == object else col)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
        owners[name] = suite
    table = table.replace_schema_metadata({_META_KEY: json.dumps(owners).encode()})
    atomic_write_parquet(path, table)
    return path


def read_latents_table(path: str | Path) -> tuple[pa.Table, dict[str, str]]:
    """(table, column -> suite that wrote it)."""
    table = pq.read_table(path)
    return table, json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
