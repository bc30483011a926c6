"""The one place that writes artifacts: durable atomic writes and checksums.

Every write goes to a temporary file beside the target, is flushed and fsynced, renamed over the
target, and then the folder is fsynced, so after a crash (or a power cut) the target is either
the old complete file or the new complete one. `replace_dir` does the same for whole folders.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make renames and new entries in folder `path` durable (a no-op where folders cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under `root` (bottom-up), then `root` itself."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


def _atomic(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fsync_file(tmp)  # the data is on disk before the name points at it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # ... and the rename itself survives a power cut


class ForeignFolderError(ValueError):
    """A folder this package did not write stands where it would replace or delete one; the
    message is one sentence naming it (the CLI prints it like a ConfigError)."""


def require_ours(folder: str | Path, owned: Callable[[Path], bool], what: str) -> None:
    """Before anything replaces or deletes `folder`: it must be absent, an empty folder, or one
    that `owned` recognises as `what` this package wrote (by its manifest or config). Anything
    else (a home folder, a project given as --out by mistake) is a ForeignFolderError and nothing
    is touched. Every place that deletes a folder goes through here."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink():
        if not any(folder.iterdir()) or owned(folder):
            return
    raise ForeignFolderError(
        f"{str(folder)!r} exists and is not {what}, so it is not replaced or deleted; give a new "
        "or empty folder, or move it away yourself."
    )


def replace_dir(
    tmp: str | Path, final: str | Path, owned: Callable[[Path], bool], what: str
) -> None:
    """Move the complete folder `tmp` to `final` durably; an existing `final` (which must pass
    `require_ours`) is swapped out first and deleted only once the new one is in place."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".old-{final.name}")
    require_ours(final, owned, what)
    require_ours(old, owned, what)  # left by a swap that was killed: the previous `final`
    fsync_tree(tmp)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    _atomic(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


_OS_ERROR_CODE = re.compile(r"(?:code: |os error )(\d+)")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def disk_full(e: BaseException) -> bool:
    """Whether `e` says the disk (or the process's file-size limit) is full; also safetensors'
    own error type, which carries the OS error code only in its message."""
    if isinstance(e, OSError):
        return e.errno in DISK_FULL_ERRNOS
    code = _OS_ERROR_CODE.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    return code is not None and int(code.group(1)) in DISK_FULL_ERRNOS


def save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata=None) -> None:
    """`safetensors.torch.save_file`, whose I/O failures (a Rust error type) become OSError, so
    a full disk is reported like any other failed write."""
    from safetensors import SafetensorError

    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        code = _OS_ERROR_CODE.search(str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), path) from None


def atomic_save_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_safetensors(tensors, tmp, metadata=metadata))


def atomic_save_png(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, tightly cropped."""
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


@contextlib.contextmanager
def atomic_folder(folder: str | Path, owned: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Write a whole folder at once: yields an empty temporary folder beside `folder`; on a
    normal exit it replaces `folder` (an old one is moved aside, then deleted), on an error it is
    removed. Readers see the old folder or the new one, never a half-written mix. An existing
    `folder` must be empty or `owned` (`require_ours`), checked before anything is written."""
    folder = Path(folder)
    require_ours(folder, owned, what)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        replace_dir(tmp, folder, owned, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


LEFTOVER_NAMES = re.compile(
    r"\..+\.[a-z0-9_]+\.tmp"  # _atomic's file: .<name>.<random>.tmp
    r"|\..+\.tmp-[a-z0-9_]+"  # atomic_folder's folder: .<name>.tmp-<random>
    r"|\.(tmp|old)-\d{12}"  # a checkpoint's .tmp-<tokens>, replace_dir's .old-<tokens>
)
"""The names our killed writes leave beside their target (and nobody else's hidden files)."""


def is_write_leftover(path: Path) -> bool:
    """Whether `path` is what a write killed midway left beside its target: a name of
    `LEFTOVER_NAMES`, or `replace_dir`'s `.old-<name>` folder of an SAE folder (one that holds
    cfg.json). Anything else, a user's `.tmp-photos` included, is not ours to delete."""
    if LEFTOVER_NAMES.fullmatch(path.name):
        return True
    return path.name.startswith(".old-") and (path / "cfg.json").is_file()


def remove_write_leftovers(folder: str | Path) -> None:
    """Delete the leftovers (`is_write_leftover`) of killed writes directly in `folder`. Only
    for a folder one process writes: another writer's temporary files would be deleted under
    it."""
    folder = Path(folder)
    for path in list(folder.iterdir()) if folder.is_dir() else []:
        if not is_write_leftover(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_parquet(path: str | Path, table: Any) -> None:
    """A pyarrow Table as a Parquet file."""
    import pyarrow.parquet as pq

    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of named tensors (names, dtypes, shapes, bytes): the same for the same weights,
    whichever file layout they were read from."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
