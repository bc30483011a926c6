"""Hugging Face Hub repos and SAELens registry releases, fetched to a local folder.

    sae.load("EleutherAI/sae-pythia-70m-32k", "layers.3")        # a repo and a subfolder
    sae.load("jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre")
    sae.load("gpt2-small-res-jb", "blocks.8.hook_resid_pre")      # SAELens release + sae_id

Downloads go through `huggingface_hub.snapshot_download`, so its cache is used and reused, and
`HF_HUB_OFFLINE=1` reads the cache only. `HF_HUB_OFFLINE` and `HF_HUB_CACHE` are read at call
time (huggingface_hub reads them at import). Only the config files are fetched first; the
weights of the one SAE asked for follow, so a repo holding hundreds of SAEs costs one SAE.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from sae.config import ConfigError, first_line

CONFIG_FILES = ("cfg.json", "config.json")
WEIGHT_FILES = ("sae_weights.safetensors", "sparsity.safetensors", "sae.safetensors", "ae.pt")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def unsafe_hub_path(text: str) -> str | None:
    """Why `text` (a repo id, a subfolder, a hookpoint) could name a file outside its repo's
    folder in the Hub cache, or None when it cannot."""
    if "\\" in text:
        return "it holds a backslash"
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return "it is an absolute path"
    if ".." in text.split("/"):
        return "it has a '..' part"
    return None


def check_hub_path(text: str, what: str) -> None:
    """ConfigError naming `text` when it could leave the repo (see `unsafe_hub_path`): bad
    input, so every command prints it as one line (a ConfigError is a ValueError for callers of
    `sae.load`)."""
    why = unsafe_hub_path(text)
    if why is not None:
        raise ConfigError(
            f"{what} {text!r} is refused: {why}, so it could name a file outside the repo; "
            "give a path inside it, e.g. 'org/name/layers.3'."
        )


def split_repo_id(source: str) -> tuple[str, str] | None:
    """('org/name', 'sub/folder') for 'org/name[/sub/folder]', None if it is not that shape (a
    local path). A Hub path with a '..' part is a ConfigError: it would resolve outside the repo."""
    if source.startswith(("/", ".", "~")) or "\\" in source:
        return None  # a filesystem path
    parts = source.strip("/").split("/")
    if len(parts) < 2 or not _REPO_ID.fullmatch("/".join(parts[:2])):
        return None
    check_hub_path(source, "Hub path")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                local_files_only=_offline(),
            )
        )
    except RepositoryNotFoundError:
        raise ValueError(f"Hub repo {repo_id!r} does not exist (or is private).") from None
    except RevisionNotFoundError:
        raise ValueError(f"Hub repo {repo_id!r} has no revision {revision!r}.") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
        raise ValueError(
            f"Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local Hub cache "
            f"and {why}."
        ) from None
    except Exception as e:  # network errors, bad ids: one line, not a traceback
        first = first_line(e)
        raise ValueError(f"cannot fetch Hub repo {repo_id!r}: {first}") from None


def sae_folders_under(root: Path, max_depth: int = 4) -> list[str]:
    """Subfolders (relative to `root`, at most `max_depth` deep) holding an SAE we read."""
    found = []
    for here, dirs, files in os.walk(root):
        rel = Path(here).relative_to(root)
        dirs[:] = (
            sorted(d for d in dirs if not d.startswith(".")) if len(rel.parts) < max_depth else []
        )
        names = set(files)
        if rel.parts and (names & {"cfg.json", "ae.pt"}):  # config.json alone is a run config
            found.append(rel.as_posix())
    return sorted(found)


def fetch(repo_id: str, subfolder: str, revision: str | None) -> Path:
    """The local folder of one SAE in a Hub repo (configs first, then that SAE's weights)."""
    check_hub_path(repo_id, "Hub repo id")
    check_hub_path(subfolder, f"subfolder of Hub repo {repo_id!r}")
    sub = subfolder.strip("/")
    prefix = f"{sub}/" if sub else ""
    root = _snapshot(repo_id, revision, [f"*{name}" for name in CONFIG_FILES])
    folder = root / sub if sub else root
    if not any((folder / name).is_file() for name in CONFIG_FILES + ("ae.pt",)):
        found = sae_folders_under(folder if folder.is_dir() else root)
        where = f"{repo_id}/{sub}" if sub else repo_id
        if found:
            shown = ", ".join(found[:8]) + (
                f", ... ({len(found)} in all)" if len(found) > 8 else ""
            )
            raise ValueError(
                f"Hub repo {where!r} holds several SAEs ({shown}); name one as the second "
                "argument, e.g. sae.load(repo, 'layers.3')."
            )
        raise ValueError(f"Hub repo {where!r} holds no SAE config (cfg.json or config.json).")
    return _snapshot(repo_id, revision, [prefix + name for name in WEIGHT_FILES]) / sub


# ---- SAELens registry ------------------------------------------------------------------------

# Registry formats we read ourselves from the repo; every other one goes through SAELens.
_NATIVE_CONVERSIONS = (None, "sparsify", "dictionary_learning_1")


def saelens_installed() -> bool:
    """Whether sae-lens (the `saelens` extra) can be imported."""
    return importlib.util.find_spec("sae_lens") is not None


def saelens_release(release: str) -> object | None:
    """The SAELens registry entry for `release`, or None if sae-lens is missing or lacks it."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        return None
    return get_pretrained_saes_directory().get(release)


def resolve_release(release: str, sae_id: str, lookup) -> tuple[str, str, dict] | None:
    """(repo id, subfolder, metadata) of a registry SAE we read from its repo, or None when it
    needs SAELens's own converter (then `load_with_saelens`)."""
    if sae_id not in lookup.saes_map:
        ids = list(lookup.saes_map)
        shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
        raise ValueError(f"SAELens release {release!r} has no sae_id {sae_id!r}; it has {shown}.")
    meta = {"saelens_release": release, "saelens_sae_id": sae_id}
    if lookup.model:
        meta["saelens_model_name"] = lookup.model
    overrides = dict(lookup.config_overrides or {})
    native = lookup.conversion_func in _NATIVE_CONVERSIONS
    # Run-time normalisation changes the SAE's maths: SAELens folds it, so let SAELens load.
    if not native or lookup.norm_scaling_factor.get(sae_id) or "normalize_activations" in overrides:
        return None
    meta |= overrides  # SAELens applies these over the folder's cfg: dataset, model kwargs
    return lookup.repo_id, lookup.saes_map[sae_id], meta


def load_with_saelens(release: str, sae_id: str) -> Path:
    """SAELens's own loader (Gemma Scope, Llama Scope, ... converters, norm folding), saved as a
    SAELens folder in a scratch folder (sae/fsutil.py) that the caller reads and deletes."""
    from sae_lens import SAE as SAELensSAE

    try:
        model = SAELensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:
        first = first_line(e)
        raise ValueError(f"SAELens could not load {release!r} / {sae_id!r}: {first}") from None
    from sae.fsutil import scratch_dir

    folder = scratch_dir("sae-saelens-")
    model.save_model(str(folder))
    return folder
