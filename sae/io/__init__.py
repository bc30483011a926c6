"""Read SAEs from wherever they were trained; write them in the SAELens v6 layout.

    import sae
    d = sae.load("checkpoints/default/final/resid_post.3-topk-3072-k32")  # our folder
    d = sae.load("path/to/saelens_folder")                # SAELens v6 (and older) folders
    d = sae.load("runs/sparsify/layers.6")                # sparsify: cfg.json + sae.safetensors
    d = sae.load("runs/dl/trainer_0")                     # dictionary_learning: ae.pt + config.json
    d = sae.load("EleutherAI/sae-pythia-70m-32k", "layers.3")   # a Hub repo (+ subfolder)
    d = sae.load("gpt2-small-res-jb", "blocks.8.hook_resid_pre")  # a SAELens release + sae_id
    d.cfg.hook_name, d.cfg.model_name, d.cfg.d_in, d.cfg.d_sae, d.cfg.architecture
    sae.io.save(d, "out/layer3")                          # always the SAELens v6 layout

Every layout becomes the same `SAE` module (encode/decode/forward as the library that wrote it
computes them) with the facts it records (model, hook) in `metadata` and on `cfg`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sae.fsutil import remove
from sae.io.build import LoadedConfig
from sae.io.dictionary_learning import is_dictionary_learning_folder, load_dictionary_learning
from sae.io.folder import (
    CFG_FILE,
    OUR_KEY,
    SAELENS_FORMAT_VERSION,
    SPARSITY_FILE,
    WEIGHTS_FILE,
    load_folder,
    saelens_architecture,
    save,
)
from sae.io.hub import (
    check_hub_path,
    fetch,
    load_with_saelens,
    resolve_release,
    sae_folders_under,
    saelens_installed,
    saelens_release,
    split_repo_id,
)
from sae.io.sparsify import is_sparsify_folder, load_sparsify
from sae.model.sae import SAE

__all__ = [
    "CFG_FILE",
    "LAYOUTS",
    "OUR_KEY",
    "SAELENS_FORMAT_VERSION",
    "SPARSITY_FILE",
    "WEIGHTS_FILE",
    "LoadedConfig",
    "load",
    "load_local",
    "save",
    "saelens_architecture",
]

LAYOUTS = (
    "ours or SAELens (cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors), "
    "dictionary_learning (ae.pt + config.json), a Hugging Face Hub repo id ('org/name', optionally "
    "with a subfolder), or a SAELens release with its sae_id"
)


def _unknown(source: str, why: str) -> ValueError:
    return ValueError(f"cannot load {source!r}: {why}; sae.load reads {LAYOUTS}.")


def load_local(folder: Path) -> SAE:
    """An SAE from a local folder, whichever library wrote it."""
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist or is not a folder.")
    if (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return load_folder(folder)
    if is_sparsify_folder(folder):
        return load_sparsify(folder)
    if is_dictionary_learning_folder(folder):
        return load_dictionary_learning(folder)
    found = sae_folders_under(folder)
    if found:
        shown = ", ".join(found[:8]) + (f", ... ({len(found)} in all)" if len(found) > 8 else "")
        raise _unknown(
            str(folder), f"it holds several SAEs ({shown}); load one of them (or name it as the "
            "second argument)"
        )  # fmt: skip
    has = sorted(p.name for p in folder.iterdir())[:6]
    if (folder / CFG_FILE).is_file():
        why = f"it has {CFG_FILE} but no {WEIGHTS_FILE} (nor sparsify's sae.safetensors)"
    else:
        why = f"it is not an SAE folder of a known layout (it holds {has or 'nothing'})"
    raise _unknown(str(folder), why)


def load(
    source: str | os.PathLike,
    sae_id: str | None = None,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> SAE:
    """Load an SAE from a local folder, a Hugging Face Hub repo, or a SAELens release.

    `source`: a folder (any layout in LAYOUTS), a Hub repo id 'org/name' (optionally
    'org/name/sub/folder'), or a SAELens release name (needs the saelens extra:
    `pip install -e '.[saelens]'`).
    `sae_id`: for a release, the SAE's id in the SAELens registry; for a folder or a repo, the
    subfolder holding one SAE (a sparsify hookpoint such as 'layers.6').
    `revision`: Hub branch, tag or commit (default: main).
    """
    text = os.fspath(source)
    if sae_id is not None:
        check_hub_path(sae_id, "sae_id")
    local = Path(text)
    # A path whose first folder exists here is a (mistyped) local path, not a Hub repo id.
    if local.exists() or isinstance(source, os.PathLike) or Path(*local.parts[:1]).is_dir():
        return load_local(local / sae_id if sae_id else local).to(device=device, dtype=dtype)
    lookup = saelens_release(text) if sae_id is not None else None
    if lookup is not None:
        resolved = resolve_release(text, sae_id, lookup)
        if resolved is None:  # a converter only SAELens has: let it load, then read its save
            tmp = load_with_saelens(text, sae_id)
            try:
                model = load_local(tmp)
            finally:
                remove(tmp, "scratch")
            model.metadata |= {"saelens_release": text, "saelens_sae_id": sae_id}
            return model.to(device=device, dtype=dtype)
        repo_id, sub, meta = resolved
        model = load_local(fetch(repo_id, sub, revision))
        model.metadata.update(meta)
        model.metadata.setdefault("hub_repo", repo_id)
        return model.to(device=device, dtype=dtype)
    repo = split_repo_id(text)
    if repo is None:
        if sae_id is None:
            hint = "it is neither a local folder nor a Hub repo id"
        elif saelens_installed():
            hint = "it is neither a local folder, a Hub repo id, nor a SAELens release"
        else:
            hint = (
                "it is neither a local folder nor a Hub repo id, and SAELens releases need the "
                "saelens extra (`pip install -e '.[saelens]'`)"
            )
        raise _unknown(text, hint)
    repo_id, sub = repo
    sub = "/".join(filter(None, (sub, sae_id)))
    try:
        model = load_local(fetch(repo_id, sub, revision))
    except ValueError as e:
        raise _unknown(text, str(e).rstrip(".")) from None
    model.metadata.setdefault("hub_repo", repo_id)
    return model.to(device=device, dtype=dtype)
