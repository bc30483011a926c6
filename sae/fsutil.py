"""The one place that writes, replaces and deletes artifacts, and decides which folders are ours.

A folder is ours only if it carries the marker (`MARKER`) we wrote when we created it, naming its
kind (run, checkpoint, SAE, cache, report, export, ...). Every delete (`remove`), replace
(`replace_dir`, `atomic_folder`, `_atomic`) and append (`open_append`) checks it through
`require_ours`; a non-empty folder without our marker, or with another kind's, is refused in one
line (ForeignFolderError) and nothing is touched.

Every write goes to a temporary file in a staging folder, is flushed and fsynced, renamed over
the target, and then the folder is fsynced, so after a crash (or a power cut) the target is either
the old complete file or the new complete one. `atomic_folder` does the same for whole folders.
The staging folder is the one the nearest folder of ours records in its marker, so what a killed
write left is found there (`clear_staging`), never by matching names.
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
from typing import IO, Any, Literal

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


# -- which folders are ours -------------------------------------------------------------------

MARKER = ".sae-folder.json"
"""The file this package writes into every folder it creates (or is handed empty), naming the
folder's kind. A folder is ours only if it carries one: no other file (a cfg.json, a manifest, a
config.yaml) and no name makes it ours."""

STAGING = ".sae-tmp"
"""The folder, inside a folder of ours, where its writes keep their temporaries until they are
renamed into place. The marker records it, so what a killed write left is found there (and
only there) by `clear_staging`; it is removed whenever it is empty."""

Kind = Literal[
    "run", "checkpoint", "sae", "cache", "report", "export", "corpus", "model", "scratch", "staging"
]
KINDS: dict[str, str] = {
    "run": "a training run",
    "checkpoint": "a checkpoint",
    "sae": "an SAE folder",
    "cache": "an activation cache",
    "report": "an eval report",
    "export": "an export",
    "corpus": "a text corpus cache",
    "model": "a model a script trained",
    "scratch": "a scratch folder",
    "staging": "a staging folder",
}
"""Each kind of folder this package writes, as the refusal names it."""


class ForeignFolderError(ValueError):
    """A folder this package did not write (or wrote as another kind) stands where it would
    write, replace or delete; the message is one sentence naming it and what to do (the CLI
    prints it like a ConfigError)."""


def _refuse(folder: str | Path, kind: str, why: str) -> ForeignFolderError:
    return ForeignFolderError(
        f"{str(folder)!r} {why}, so sae does not write into it as {KINDS[kind]}; choose a new "
        "or empty folder, or move it away."
    )


def read_marker(folder: str | Path, fs: Any = None) -> dict | None:
    """The marker of `folder` (a local folder, or a path on fsspec filesystem `fs`); None when
    it has none, or none that is ours."""
    try:
        raw = (
            fs.cat_file(f"{folder}/{MARKER}")
            if fs is not None
            else Path(folder, MARKER).read_bytes()
        )
        marker = json.loads(raw)
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(marker, dict)
        and marker.get("written_by") == "sae"
        and marker.get("kind") in KINDS
    )
    return marker if ok else None


def kind_of(folder: str | Path, fs: Any = None) -> str | None:
    """The kind our marker in `folder` names; None for a folder that is not ours."""
    marker = read_marker(folder, fs)
    return marker["kind"] if marker else None


def _entries(folder: str | Path, kind: str, fs: Any) -> list[str] | None:
    """The names in `folder` (a link to a folder is followed); None when it does not exist. A
    file there is refused: nothing of ours is one."""
    if fs is not None:
        if fs.isfile(folder):
            raise _refuse(folder, kind, "is a file")
        if not fs.exists(folder):
            return None
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise _refuse(folder, kind, "is a file")
    return [p.name for p in folder.iterdir()] if folder.exists() else None


def require_ours(folder: str | Path, kind: Kind, fs: Any = None) -> None:
    """The one check before this package writes into, replaces, appends to or deletes anything
    in `folder`: it must be absent, empty, or carry our marker of `kind`. Anything else (a home
    folder given as --out, a run given as an export's --out) is one ForeignFolderError and
    nothing is touched. A folder holding nothing but a marker a kill cut short counts as empty."""
    names = _entries(folder, kind, fs)
    if not names or (names == [MARKER] and read_marker(folder, fs) is None):
        return
    found = kind_of(folder, fs)
    if found == kind:
        return
    if found is None:
        raise _refuse(folder, kind, f"is not empty and has no {MARKER} of sae's")
    raise _refuse(folder, kind, f"was written by sae as {KINDS[found]}")


def _write_marker(folder: str | Path, kind: Kind, fs: Any = None, **record: str) -> None:
    text = json.dumps({"written_by": "sae", "kind": kind, "staging": STAGING, **record}) + "\n"
    if fs is not None:
        fs.makedirs(folder, exist_ok=True)
        fs.pipe_file(f"{folder}/{MARKER}", text.encode())
        return
    # Written in place, not renamed: its temporary would make the folder look foreign. A kill
    # midway leaves a folder holding only an unreadable marker, which `require_ours` takes as empty.
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(folder)
    fsync_dir(folder.parent)


def claim(folder: str | Path, kind: Kind, fs: Any = None) -> Path | str:
    """Make `folder` ours as `kind` before writing into it: created with our marker when
    absent, marked when empty, kept when it already carries our marker of `kind`; anything else
    is a ForeignFolderError (`require_ours`). Returns `folder`."""
    require_ours(folder, kind, fs)
    if kind_of(folder, fs) != kind:
        _write_marker(folder, kind, fs)
    return folder


def owner(path: str | Path) -> Path | None:
    """The nearest folder above `path` that carries our marker; None if there is none."""
    for folder in Path(path).absolute().parents:
        if (folder / MARKER).is_file() and read_marker(folder) is not None:
            return folder
    return None


def remove(path: str | Path, kind: Kind, fs: Any = None) -> None:
    """The one way this package deletes: `path` is a folder that `require_ours` accepts as
    `kind` (our marker of `kind`, or empty), or a file inside the nearest folder of ours, which
    must be of `kind`. Absent: nothing to do. Anything else: ForeignFolderError, nothing gone."""
    if fs is not None:
        require_ours(path, kind, fs)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        require_ours(path, kind)
        shutil.rmtree(path)
        return
    require_ours(owner(path) or path.parent, kind)
    path.unlink()


def _staging_of(folder: Path) -> Path | None:
    """The staging folder the marker of `folder` records (a plain name inside it)."""
    name = (read_marker(folder) or {}).get("staging")
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        return None
    return folder / name


def clear_staging(folder: str | Path, kind: Kind) -> None:
    """Delete what killed writes left in `folder` of `kind`: the staging folder its marker
    records, nothing else. Only while no other process writes into `folder`."""
    require_ours(folder, kind)
    staging = _staging_of(Path(folder))
    if staging is not None and staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)


def open_append(path: str | Path, kind: Kind | None) -> IO[str]:
    """`path` opened for appending (a log such as a run's metrics.jsonl), only inside a folder
    of ours of `kind`. `kind` None: a file the user named on the command line (a script's
    --log), appended to wherever it is, but never a folder or a link."""
    path = Path(path)
    if kind is not None:
        require_ours(owner(path) or path.parent, kind)
    elif path.is_symlink() or path.is_dir():
        raise ForeignFolderError(
            f"{str(path)!r} is a folder or a link, not a log file to append to."
        )
    return open(path, "a")  # noqa: SIM115  (the caller keeps it open and closes it)


def scratch_dir(prefix: str, parent: str | Path | None = None) -> Path:
    """A new empty folder of ours (kind scratch) under `parent` (default: the system's temporary
    folder), for a caller to fill and then delete with `remove(path, "scratch")`."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    _write_marker(folder, "scratch")
    return folder


# -- writes that are whole or absent ------------------------------------------------------------


def _staging_in(base: Path, prefix: str) -> Path:
    for _ in range(100):
        base.mkdir(exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        except FileNotFoundError:  # another writer removed the empty staging folder just now
            continue
    raise OSError(errno.EAGAIN, "could not create a staging folder", str(base))


def _same_disk(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A new private folder, on `target`'s file system, for the temporaries of one write to
    `target`; deleted afterwards. It lies in the staging folder of the nearest folder of ours
    above `target` (what a kill leaves there is found by `clear_staging`); where there is none,
    beside `target`, carrying a marker that says which name it stages, so the next write to
    that name finds a killed one's leftovers by that marker."""
    target.parent.mkdir(parents=True, exist_ok=True)
    home = owner(target)
    base = _staging_of(home) if home is not None else None
    if base is not None and _same_disk(base.parent, target.parent):
        private = _staging_in(base, f"{target.name}.")
    else:
        base = None
        for entry in target.parent.iterdir():
            marker = read_marker(entry) if entry.is_dir() and not entry.is_symlink() else None
            if marker and marker["kind"] == "staging" and marker.get("for") == target.name:
                shutil.rmtree(entry, ignore_errors=True)
        private = Path(tempfile.mkdtemp(prefix=f".{target.name}.sae-tmp-", dir=target.parent))
        _write_marker(private, "staging", **{"for": target.name})
    try:
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if base is not None:
            with contextlib.suppress(OSError):
                os.rmdir(base)  # only when empty: another writer may be using it


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` writes the file's content to the path `tmp`; it is then fsynced and renamed
    to `path` (the pattern of every atomic_* writer here, for a format of the caller's)."""
    _atomic(path, write)


def _atomic(path: str | Path, write) -> None:
    path = Path(path)
    with _staged(path) as private:
        tmp = private / path.name
        write(str(tmp))
        fsync_file(tmp)  # the data is on disk before the name points at it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    fsync_dir(path.parent)  # ... and the rename itself survives a power cut


def replace_dir(new: str | Path, final: str | Path, kind: Kind, aside: str | Path) -> None:
    """Move the complete folder `new` to `final` durably; an existing `final` (which must pass
    `require_ours` as `kind`) is first moved to `aside`, a name in the same staging folder,
    which is deleted with it."""
    new, final = Path(new), Path(final)
    require_ours(final, kind)
    fsync_tree(new)
    if final.exists():
        os.replace(final, aside)
    os.replace(new, final)
    fsync_dir(final.parent)


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
def atomic_folder(folder: str | Path, kind: Kind) -> Iterator[Path]:
    """Write a whole folder at once: yields an empty folder, already carrying our marker of
    `kind`, in a staging folder; on a normal exit it replaces `folder` (an old one is moved
    aside, then deleted), on an error it is removed. Readers see the old folder or the new one,
    never a half-written mix. An existing `folder` must pass `require_ours` as `kind`, checked
    before anything is written."""
    folder = Path(folder)
    require_ours(folder, kind)
    with _staged(folder) as private:
        new = private / "new"
        new.mkdir()
        os.chmod(new, 0o777 & ~_umask())
        _write_marker(new, kind)
        yield new
        replace_dir(new, folder, kind, private / "old")


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
