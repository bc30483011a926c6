"""SAE folders on disk, in the SAELens v6 layout, so every downstream tool can read them.

    import sae
    sae.io.save(model, "out/layer3", metadata={"model_name": "all-MiniLM-L6-v2",
                                               "hook_name": "encoder.layer.3"})
    d = sae.load("out/layer3")          # ours, or any folder SAELens wrote

A folder holds `cfg.json` (SAELens keys plus our full config under "sae_config"),
`sae_weights.safetensors` (W_enc, b_enc, W_dec, b_dec, threshold, ...) and optionally
`sparsity.safetensors` (key "sparsity": log10 firing rate per latent). Only JSON and
safetensors are read: no pickle, no torch.load.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor

from sae.fsutil import atomic_folder, atomic_save_safetensors, atomic_write_text, require_ours
from sae.io import validate
from sae.io.build import assemble, check_fits
from sae.model.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
OUR_KEY = "sae_config"
# SAELens reads a missing or pre-6 version as its old layout, so we declare the v6 layout.
SAELENS_FORMAT_VERSION = "6.0.0"

# SAELens architecture -> (ours, is transcoder, has skip)
_FROM_SAELENS = {
    "standard": ("relu", False, False),
    "topk": ("topk", False, False),
    "batchtopk": ("batchtopk", False, False),
    "matryoshka_batchtopk": ("matryoshka", False, False),
    "jumprelu": ("jumprelu", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
# Folded or reversible at save time in SAELens; the other modes run at inference and we refuse.
_NORMALIZE_OK = {None, False, "none", "expected_average_only_in", "covariance_whitening"}


def saelens_architecture(sae: SAE) -> str:
    """The SAELens architecture whose inference matches `sae.encode`/`decode`.

    BatchTopK and Matryoshka save as JumpReLU once they have a threshold (as SAELens saves
    them) and as TopK before. TopK transcoders have no SAELens class: "topk_transcoder"."""
    cfg = sae.cfg
    arch = cfg.architecture
    kind = {"relu": "standard", "gated": "gated"}.get(arch)
    if kind is None:
        kind = "jumprelu" if sae.has_learned_threshold else "topk"
    if cfg.d_out is None:
        return kind
    skip = "skip_" if cfg.skip_connection else ""
    return {"standard": f"{skip}transcoder"}.get(kind, f"{kind}_{skip}transcoder")


def _state_for_saelens(sae: SAE) -> dict[str, Tensor]:
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    if "threshold" in state and not sae.has_learned_threshold:
        del state["threshold"]  # saved as SAELens TopK, which has no threshold
    return state


def save(
    sae: SAE,
    folder: str | os.PathLike,
    metadata: dict | None = None,
    sparsity_log10: Tensor | None = None,
) -> Path:
    """Write `sae` as an SAELens v6 folder, atomically, and return its path.

    Everything is written into a staging folder and renamed into place, so `folder` is either
    the old complete SAE or the new one, never half written. The folder carries our marker
    (sae/fsutil.py) beside the SAELens files; an SAE folder this package wrote is replaced
    whole, any other non-empty folder is refused (ForeignFolderError).
    `metadata` (model_name, hook_name, ...) is merged over `sae.metadata` into cfg.json.
    """
    folder = Path(folder)
    cfg = sae.cfg
    require_ours(folder, "sae")  # before anything is built: a foreign folder is one line
    if sparsity_log10 is not None and tuple(sparsity_log10.shape) != (cfg.d_sae,):
        raise ValueError(
            f"sparsity_log10 has shape {tuple(sparsity_log10.shape)}; expected ({cfg.d_sae},)."
        )
    meta = {"sae_lens_version": SAELENS_FORMAT_VERSION, **sae.metadata, **(metadata or {})}
    cfg_json: dict = {
        "architecture": saelens_architecture(sae),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": str(sae.W_enc.device),
        "apply_b_dec_to_input": sae.centers_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if cfg.d_out is not None:
        cfg_json["d_out"] = cfg.d_out
    if cfg_json["architecture"].startswith("topk"):
        cfg_json["k"] = cfg.k
        cfg_json["rescale_acts_by_decoder_norm"] = False
    cfg_json[OUR_KEY] = {f.name: getattr(cfg, f.name) for f in fields(SAEConfig)}
    text = json.dumps(cfg_json, indent=2, allow_nan=False) + "\n"
    state = _state_for_saelens(sae)

    with atomic_folder(folder, "sae") as tmp:
        atomic_save_safetensors(tmp / WEIGHTS_FILE, state)
        if sparsity_log10 is not None:
            sp = {"sparsity": sparsity_log10.detach().float().cpu().contiguous()}
            atomic_save_safetensors(tmp / SPARSITY_FILE, sp)
        atomic_write_text(tmp / CFG_FILE, text)
    return folder


def load_folder(folder: Path) -> SAE:
    """Read an SAE folder written by `save` or by SAELens (standard, topk, batchtopk,
    matryoshka_batchtopk, jumprelu, gated, transcoders; pre-6 SAELens cfg keys too)."""
    raw = validate.read_json(folder / CFG_FILE)
    validate.check_cfg(raw, folder / CFG_FILE)
    weights = folder / WEIGHTS_FILE
    # The config is checked against the shapes in the weights' header before any tensor data
    # is read or any SAE of the size the config claims is built.
    shapes = validate.safetensors_shapes(weights)
    if OUR_KEY in raw:
        known = {f.name for f in fields(SAEConfig)}
        ours = raw[OUR_KEY]
        unknown = sorted(set(ours) - known)
        if unknown:
            raise ValueError(f"{folder / CFG_FILE} has unknown sae_config keys {unknown}.")
        cfg = SAEConfig(**ours)
        check_fits(cfg, shapes, str(weights))
        state = validate.read_safetensors(weights)
        validate.check_weights(state, weights)
        metadata = dict(raw.get("metadata") or {})
    else:
        _check_saelens_sizes(folder, raw, shapes)
        state = validate.read_safetensors(weights)
        validate.check_weights(state, weights)
        cfg, state, metadata = _from_saelens(folder, raw, state)
    return assemble(cfg, state, metadata, str(folder / WEIGHTS_FILE))


def _check_saelens_sizes(folder: Path, raw: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """cfg.json's d_in, d_sae and d_out (where given) are the sizes of W_enc [d_in, d_sae] and
    W_dec [d_sae, d_out] in the weights' header."""
    enc, dec = shapes.get("W_enc"), shapes.get("W_dec")
    if enc is None or dec is None or len(enc) != 2 or len(dec) != 2:
        return  # named in full by check_weights / _from_saelens once read
    found = {"d_in": enc[0], "d_sae": enc[1]}
    declared = {k: raw.get(k) for k in ("d_in", "d_sae")}
    if raw.get("d_out") is not None:
        found["d_out"], declared["d_out"] = dec[1], raw["d_out"]
    held = f"{folder / WEIGHTS_FILE} holds W_enc {list(enc)} and W_dec {list(dec)}"
    validate.check_declared(declared, found, folder / CFG_FILE, held)


def _from_saelens(folder: Path, raw: dict, state: dict[str, Tensor]):
    """Our config, state and metadata for a folder SAELens wrote (v6 or older keys)."""
    where = folder / CFG_FILE
    arch_name = raw.get("architecture")
    if arch_name is None:  # pre-6 SAELens: activation_fn_str / activation_fn_kwargs
        act = raw.get("activation_fn_str", raw.get("activation_fn", "relu"))
        arch_name = "topk" if act == "topk" else "standard"
    if arch_name not in _FROM_SAELENS:
        raise ValueError(
            f"{where} has architecture={arch_name!r}; readable ones are {', '.join(_FROM_SAELENS)}."
        )
    arch, is_transcoder, skip = _FROM_SAELENS[arch_name]
    norm = raw.get("normalize_activations")
    if norm is True:
        norm = "expected_average_only_in"
    if norm not in _NORMALIZE_OK:
        raise ValueError(
            f"{where} has normalize_activations={norm!r}, which SAELens applies at run time; "
            "only none, expected_average_only_in and covariance_whitening (folded into the "
            "weights) are."
        )
    if "W_enc" not in state or "W_dec" not in state:
        raise ValueError(f"{folder / WEIGHTS_FILE} lacks W_enc or W_dec.")
    d_in, d_sae = state["W_enc"].shape
    kw: dict = {"architecture": arch, "d_in": int(d_in), "d_sae": int(d_sae)}
    if is_transcoder:
        kw["d_out"] = int(state["W_dec"].shape[1])
        kw["skip_connection"] = skip
        kw["apply_b_dec_to_input"] = False
    else:
        kw["apply_b_dec_to_input"] = bool(raw.get("apply_b_dec_to_input", True))
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    if arch in ("topk", "batchtopk", "matryoshka"):
        if k is None or float(k) != int(k):
            raise ValueError(f"{where} has k={k!r}; a whole number of latents is needed.")
        kw["k"] = int(k)
    if arch == "matryoshka":
        widths = [int(w) for w in raw.get("matryoshka_widths") or []]
        kw["matryoshka_prefixes"] = widths if widths[-1:] == [d_sae] else [*widths, int(d_sae)]

    state = dict(state)
    if "log_threshold" in state:  # older SAELens JumpReLU training checkpoints
        state["threshold"] = state.pop("log_threshold").exp()
    if "topk_threshold" in state:  # SAELens BatchTopK training checkpoints: one scalar
        t = state.pop("topk_threshold")
        state["threshold"] = torch.full((int(d_sae),), float(t), dtype=state["W_enc"].dtype)
    scaling = state.pop("scaling_factor", state.pop("finetuning_scaling_factor", None))
    if scaling is not None:  # old SAELens fine-tuning scale on latents: fold into W_dec
        state["W_dec"] = state["W_dec"] * scaling.to(state["W_dec"].dtype)[:, None]
    if arch in ("topk", "batchtopk", "matryoshka") and raw.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks pre * |W_dec row| (its threshold is in those units) and decodes with
        # unit rows: folding the norms is exact.
        n = state["W_dec"].norm(dim=1).clamp_min(1e-8)
        state["W_enc"], state["b_enc"] = state["W_enc"] * n, state["b_enc"] * n
        state["W_dec"] = state["W_dec"] / n[:, None]
    try:
        cfg = SAEConfig(**kw)
    except ValueError as e:
        raise ValueError(f"{where} describes an invalid SAE: {e}") from None

    metadata = dict(raw.get("metadata") or {})
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    for key, value in raw.items():  # pre-6 SAELens kept these at the top level
        key = renames.get(key, key)
        if key in ("model_name", "hook_name", "hook_layer", "hook_head_index", "dataset_path"):
            metadata.setdefault(key, value)
    return cfg, state, metadata
