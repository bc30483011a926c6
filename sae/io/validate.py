"""Checks on files a user may have got from someone else: SAE folders and activation matrices
(their types, shapes, and values that no SAE can be trained or scored on).

Each check raises `ConfigError` with one sentence naming the file, the value and what is valid
(the CLI prints it as one line, exit code 2). A safetensors name holding a pickle or a
`torch.save` archive is refused by its first bytes, never unpickled, because loading one can run
arbitrary code. The one pickle format read at all, dictionary_learning's `ae.pt`, goes through
`read_torch_state_dict`: `torch.load(weights_only=True)`, whose restricted unpickler had known
bypasses before torch 2.10 (CVE-2025-32434 / GHSA-53q9-r3pm-6pq6, fixed in 2.6.0;
CVE-2026-24747 / GHSA-63cw-57p8-fm3p, fixed in 2.10.0), so on an older torch it is refused
unread (pyproject.toml requires torch>=2.10 for the same reason).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.config import ConfigError, first_line

SAFE_TORCH_LOAD = (2, 10)
"""the first torch release whose `weights_only=True` unpickler has no known bypass (see above)."""

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
"""weight files we never read (pickle-based); named in errors when found instead of safetensors."""


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    # A pickle starts with the PROTO opcode 0x80; torch.save writes a zip archive ("PK").
    return head[:1] == b"\x80" or head[:2] == b"PK"


def _torch_release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string such as '2.13.0+cpu' or '2.10.0a0+git1234'."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def read_torch_state_dict(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, refused unread on a torch release whose
    restricted unpickler can be bypassed (before SAFE_TORCH_LOAD; see the module docstring)."""
    import pickle

    if _torch_release(torch.__version__) < SAFE_TORCH_LOAD:
        need = ".".join(map(str, SAFE_TORCH_LOAD))
        raise ConfigError(
            f"{path} is a pickle (torch.save) file, and torch {torch.__version__} can be made to "
            f"run code while reading one even with weights_only=True (CVE-2025-32434, "
            f"CVE-2026-24747); upgrade to torch>={need} to read it, or convert it to "
            "safetensors with a trusted torch."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = first_line(e)
        raise ValueError(
            f"{path} is not a plain state dict of tensors (read with weights_only=True): {first}"
        ) from None


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a one-sentence error."""
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(raw).__name__}.")
    return raw


def _check_safetensors_path(path: Path) -> None:
    """A missing weights file (naming the pickles found instead) or a pickle under a
    safetensors name is refused before anything reads it."""
    if not path.is_file():
        near = [p.name for p in path.parent.glob(f"{path.stem}*") if p.suffix in PICKLE_SUFFIXES]
        hint = (
            f"; it holds {near}, pickle-based files that are never loaded (they can run code): "
            "convert them with safetensors.torch.save_file"
            if near
            else ""
        )
        raise FileNotFoundError(f"{path.parent} is not an SAE folder: it has no {path.name}{hint}.")
    if _looks_pickled(path):
        raise ConfigError(
            f"{path} is a pickle or torch.save file, not safetensors; it is never loaded (unpickling "
            "can run code): convert it with safetensors.torch.save_file."
        )


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone: no tensor data
    is read, so a config can be checked against the file before either costs memory."""
    from safetensors import SafetensorError, safe_open

    _check_safetensors_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file ({e}).") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; a pickle under that name is refused unread."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_safetensors_path(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file ({e}).") from None


def check_torch_archive(path: Path) -> None:
    """A torch.save zip archive whose records expand past the file's own size is refused
    unread: torch.save stores records uncompressed, so only a crafted file (a zip bomb) holds
    more tensor data than bytes, and reading it would cost that much memory."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format: torch.load checks its storage sizes as it reads
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            claimed = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"{path} is not a readable torch.save archive ({e}).") from None
    if claimed > size:
        raise ConfigError(
            f"{path} holds records that expand to {claimed:,} bytes from a {size:,}-byte file; "
            "torch.save never compresses, so it is refused unread."
        )


def check_declared(declared: dict[str, Any], found: dict[str, int], where: Path, held: str) -> None:
    """Each size a config declares (None: not declared) equals the one its weights hold;
    `held` says where the weights' sizes come from (a tensor and its shape)."""
    for key, value in declared.items():
        if value is not None and value != found[key]:
            raise ConfigError(
                f"{where} declares {key}={value!r} but {held}, i.e. {key}={found[key]}; the "
                "config and the weights must agree."
            )


def check_tensors(
    state: dict[str, torch.Tensor], where: Path, integer_ok: tuple[str, ...] = ()
) -> None:
    """The rule every layout's weights pass before anything is built from them: each tensor
    stores as many values as its shape claims (a torch.save view can claim a huge shape over a
    single stored value, and copying it would allocate that shape), is floating point (but the
    names in `integer_ok`) and holds no NaN or infinite value."""
    for name, t in state.items():
        stored = t.untyped_storage().nbytes() // max(t.element_size(), 1)
        if t.numel() > stored:
            raise ConfigError(
                f"{where}: {name} claims shape {list(t.shape)} ({t.numel():,} values) but the "
                f"file stores only {stored:,}; weights must be stored whole."
            )
        if not t.is_floating_point():
            if name in integer_ok and not t.is_complex():
                continue
            raise ConfigError(
                f"{where}: {name} has dtype {str(t.dtype).removeprefix('torch.')}; SAE weights "
                "must be floating point."
            )
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ConfigError(f"{where}: {name} holds {bad} NaN or infinite values.")


def check_weights(state: dict[str, torch.Tensor], where: Path) -> None:
    """`check_tensors`, and weights 2-D and biases 1-D (SAELens names)."""
    check_tensors(state, where)
    for name, t in state.items():
        want = 2 if name.startswith("W_") else 1 if name.startswith(("b_", "threshold")) else None
        if want is not None and t.dim() != want:
            raise ConfigError(
                f"{where}: {name} has shape {list(t.shape)}; it must have {want} dimension(s)."
            )


_CFG_TYPES: dict[str, tuple[type, ...]] = {
    "architecture": (str,),
    "d_in": (int,),
    "d_sae": (int,),
    "d_out": (int,),
    "k": (int, float),
    "apply_b_dec_to_input": (bool,),
    "rescale_acts_by_decoder_norm": (bool,),
    "normalize_activations": (str, bool),
    "metadata": (dict,),
    "sae_config": (dict,),
    "matryoshka_widths": (list,),
    "activation_fn_str": (str,),
    "activation_fn_kwargs": (dict,),
}


def check_cfg(raw: dict[str, Any], where: Path) -> None:
    """The keys `sae.load` reads from cfg.json have JSON types it can use (null allowed)."""
    for key, types in _CFG_TYPES.items():
        value = raw.get(key)
        if value is None:
            continue
        ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if not ok:
            names = " or ".join(
                {"str": "a string", "dict": "an object", "list": "a list"}.get(
                    t.__name__, f"a {t.__name__}"
                )
                for t in types
            )
            raise ConfigError(f"{where}: {key}={value!r} must be {names}.")
    widths = raw.get("matryoshka_widths") or []
    if not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        raise ConfigError(f"{where}: matryoshka_widths={widths!r} must be a list of integers.")


def check_matrix_dtype(dtype: str, path: Path) -> None:
    """An activation matrix is float16, bfloat16, float32 or float64."""
    if dtype.removeprefix("torch.") not in ("float16", "bfloat16", "float32", "float64"):
        raise ConfigError(
            f"activation file {str(path)!r} has dtype {dtype}; expected a floating-point matrix "
            "(float16, bfloat16, float32 or float64)."
        )


SAMPLE_BLOCKS = 16
"""evenly spaced blocks of rows read to screen an activation matrix's values."""
SAMPLE_BLOCK_ROWS = 256
SCAN_ROWS = 65_536
"""rows per read when a suspicious sample is confirmed over the whole file."""


def check_matrix_values(read: Callable[[int, int], torch.Tensor], n_rows: int, path: Path) -> None:
    """Refuse a matrix whose every value is NaN/infinite, or whose rows are all equal (no
    variance: every FVU divides by zero), before any output exists. `read(a, b)` returns rows
    [a, b) as a float tensor. SAMPLE_BLOCKS evenly spaced blocks are screened; only a sample
    that looks all-NaN or constant is confirmed over the whole file, so a healthy file costs
    about 4k rows. A file with only some non-finite rows is `check_rows_finite`'s to refuse."""
    size = min(SAMPLE_BLOCK_ROWS, n_rows)
    starts = np.unique(np.linspace(0, n_rows - size, min(SAMPLE_BLOCKS, n_rows)).astype(np.int64))
    sample = torch.cat([read(int(a), int(a) + size) for a in starts])
    finite = torch.isfinite(sample)
    where = f"activation file {str(path)!r}"
    if not finite.any() and not _any_rows(read, n_rows, lambda x: torch.isfinite(x).any()):
        raise ConfigError(
            f"{where} holds no finite value (all {n_rows:,} rows are NaN or infinite); "
            "activations must be finite numbers."
        )
    first = sample[0]
    if finite.all() and bool((sample == first).all()):
        if not _any_rows(read, n_rows, lambda x: bool((x != first).any())):
            head = ", ".join(f"{v:g}" for v in first[:3].tolist())
            rows = "its one row" if n_rows == 1 else f"all {n_rows:,} rows are equal"
            raise ConfigError(
                f"{where} is constant ({rows}: [{head}{', ...' if len(first) > 3 else ''}]); "
                "an SAE needs activations that vary (the FVU divides by their variance)."
            )


def _any_rows(read: Callable[[int, int], torch.Tensor], n_rows: int, test) -> bool:
    return any(test(read(a, min(a + SCAN_ROWS, n_rows))) for a in range(0, n_rows, SCAN_ROWS))


class NonFiniteRows(ConfigError):
    """Activation rows holding NaN or infinite values: one line with their count and the first
    one's index (no SAE can be trained or scored on them; `store.skip_nonfinite` drops them)."""


SKIP_HINT = (
    "remove those rows, or set store.skip_nonfinite: true in the YAML config of `sae train` to "
    "drop them"
)

START_SCAN_BYTES = 8 * 2**30
"""An activation file or cache up to this size (as float32) is scanned whole for non-finite rows
when it is opened, before any output exists: one sequential read, seconds per GiB, against a
training run that pushes every row through an SAE of d_sae latents forward and backward, and
the read warms the page cache the first pass then uses. A larger one has its first
START_SCAN_BYTES scanned then, and the rest as training reads it (`nonfinite_mask` on each
piece), where a bad piece stops the run at its last checkpoint."""


def nonfinite_mask(rows: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """[n] bool, True for rows holding a NaN or infinite value at any hook, or None when every
    row is finite: one vectorised pass per hook (torch.isfinite(x).all(dim=1)), no Python loop
    over rows, so it runs on every piece of the training stream."""
    ok = None
    for x in rows.values():
        row_ok = torch.isfinite(x).all(dim=1)
        ok = row_ok if ok is None else ok & row_ok
    if ok is None or bool(ok.all()):
        return None
    return ~ok


def check_rows_finite(
    read: Callable[[int, int], dict[str, torch.Tensor]], n_rows: int, row_values: int, where: str
) -> int:
    """Refuse (NonFiniteRows) the rows [0, n) holding NaN or infinity, with their count and the
    first one's index, where n is all `n_rows` when they fit in START_SCAN_BYTES (at
    `row_values` float32 values a row), else as many as do; returns n. `read(a, b)` gives rows
    [a, b) per hook."""
    n = min(n_rows, max(1, START_SCAN_BYTES // (4 * max(row_values, 1))))
    count, first = 0, -1
    for a in range(0, n, SCAN_ROWS):
        bad = nonfinite_mask(read(a, min(a + SCAN_ROWS, n)))
        if bad is not None:
            if first < 0:
                first = a + int(bad.nonzero()[0, 0])
            count += int(bad.sum())
    if count:
        among = f"of its {n_rows:,}" if n == n_rows else f"among its first {n:,}"
        raise NonFiniteRows(
            f"{where} has {count:,} rows {among} holding NaN or infinite values (the first is "
            f"row {first:,}); {SKIP_HINT}."
        )
    return n
