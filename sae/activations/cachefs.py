"""Where an activation cache lives: a local folder, or any fsspec URL (s3://, gs://, hf://,
memory://, file://), so caches can outgrow one disk.

Local folders keep plain file I/O: atomic writes through sae/fsutil.py and memory-mapped reads.
On an object store a shard is serialised in memory, hashed, and written as one object (a PUT is
atomic there: readers see the old object or the new one), and read back one shard at a time
into memory with its sha256 checked. The bytes are those of the local layout, so a cache copied
between a disk and a bucket (`aws s3 sync`, `gsutil rsync`) reads the same. The folder is a cache
of ours only if it carries sae/fsutil.py's marker (an object on a store); nothing else is
written into, resumed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from sae import fsutil
from sae.config import ConfigError, first_line
from sae.fsutil import atomic_save_safetensors, atomic_write_json, atomic_write_text, sha256_file

CACHE_FORMAT = "sae-activation-cache"
"""the `format` of every manifest `sae harvest` writes (sae/activations/harvest.py)."""


def is_url(where: str | os.PathLike) -> bool:
    return "://" in os.fspath(where)


class _Loaded(dict):
    """A shard read into memory, sliced like a `safe_open` handle: `get_slice(key)[a:b]`."""

    def get_slice(self, key: str) -> torch.Tensor:
        return self[key]


class CacheLocation:
    """One cache folder: a local Path, or a path on an fsspec filesystem."""

    def __init__(self, where: str | os.PathLike):
        self.display = os.fspath(where)
        self.fs: Any = None
        self.local: Path | None = Path(self.display)
        if is_url(self.display):
            import fsspec
            from fsspec.implementations.local import LocalFileSystem

            try:
                fs, root = fsspec.core.url_to_fs(self.display)
            except (ImportError, ValueError) as e:
                first = first_line(e)
                raise ConfigError(
                    f"cannot open {self.display!r}: {first} (s3:// needs the s3 extra: "
                    "`pip install -e '.[s3]'`; gs:// needs `pip install gcsfs`)."
                ) from None
            if isinstance(fs, LocalFileSystem):
                self.local = Path(root)
            else:
                self.fs, self.root, self.local = fs, root.rstrip("/"), None

    def __str__(self) -> str:
        return self.display

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        if self.local is not None:
            return (self.local / name).is_file()
        return self.fs.isfile(self._path(name))

    def _where(self) -> tuple[Path | str, Any]:
        return (self.local, None) if self.local is not None else (self.root, self.fs)

    def require_ours(self) -> None:
        """ForeignFolderError unless this folder is absent, empty, or an activation cache of
        ours: one that carries our marker (sae/fsutil.py), locally or as an object."""
        where, fs = self._where()
        fsutil.require_ours(where, "cache", fs)

    def claim(self) -> None:
        """Create (or mark, when empty) this folder as an activation cache of ours."""
        where, fs = self._where()
        fsutil.claim(where, "cache", fs)

    def clear_staging(self) -> None:
        """Delete what local writes that a kill cut short left (in the staging folder our marker
        records); an object store has none (a PUT is whole or absent)."""
        if self.local is not None:
            fsutil.clear_staging(self.local, "cache")

    def remove(self) -> None:
        """Delete the cache folder; refused (nothing touched) unless it is ours (`require_ours`)."""
        where, fs = self._where()
        fsutil.remove(where, "cache", fs)

    def read_json(self, name: str) -> Any:
        if self.local is not None:
            return json.loads((self.local / name).read_text())
        return json.loads(self.fs.cat_file(self._path(name)))

    def write_text(self, name: str, text: str) -> None:
        if self.local is not None:
            atomic_write_text(self.local / name, text)
        else:
            self.fs.pipe_file(self._path(name), text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        if self.local is not None:
            atomic_write_json(self.local / name, obj)
        else:
            self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def write_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> str:
        """Write a safetensors shard; returns the sha256 of its bytes."""
        if self.local is not None:
            atomic_save_safetensors(self.local / name, tensors)
            return sha256_file(self.local / name)
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in tensors.items()})
        self.fs.pipe_file(self._path(name), data)
        return hashlib.sha256(data).hexdigest()

    def open_tensors(self, name: str, sha256: str | None):
        """A handle with `get_slice(key)[a:b]`: memory-mapped locally, in memory otherwise.
        With `sha256` the bytes are checked first; a mismatch or a missing or unreadable
        shard is a ConfigError naming it."""
        where = f"{self.display.rstrip('/')}/{name}"
        if not self.exists(name):
            raise ConfigError(f"shard {where!r} of the activation cache is missing.")
        corrupt = ConfigError(
            f"shard {where!r} is corrupt (its checksum does not match the manifest); delete it "
            "and re-run `sae harvest` to rebuild it."
        )
        try:
            if self.local is not None:
                from safetensors import safe_open

                if sha256 is not None and sha256_file(self.local / name) != sha256:
                    raise corrupt
                return safe_open(str(self.local / name), framework="pt")
            from safetensors.torch import load

            data = self.fs.cat_file(self._path(name))
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                raise corrupt
            return _Loaded(load(data))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"shard {where!r} is corrupt ({e}).") from None
