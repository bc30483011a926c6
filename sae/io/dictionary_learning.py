"""Folders written by saprmarks/dictionary_learning (`trainSAE`), read without it.

A folder holds `ae.pt` (a state dict saved with `torch.save`) and `config.json`
(`{"trainer": {"dict_class": ..., "activation_dim", "dict_size", "k", "lm_name", "layer",
"submodule_name", ...}, "buffer": {...}}`). `ae.pt` is read with `torch.load(weights_only=True)`:
tensors and plain containers only, never arbitrary pickled objects; refused on torch older than
2.10, whose restricted unpickler had known bypasses (sae/io/validate.py). Activation normalisation
is already folded: `trainSAE` rescales the biases before it saves.

Each dictionary class maps onto one of our architectures with the same encode and decode:
AutoEncoder / AutoEncoderNew -> relu (with / without input centring), GatedAutoEncoder -> gated,
JumpReluAutoEncoder -> jumprelu (no input centring), AutoEncoderTopK -> topk,
BatchTopKSAE / MatryoshkaBatchTopKSAE -> batchtopk / matryoshka with their scalar threshold
(`relu(pre) * (relu(pre) > t)`, which is our `relu(pre) * (pre > t)` for t >= 0).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from sae.io import validate
from sae.io.build import assemble
from sae.model.sae import SAE, SAEConfig

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
DICT_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
)


def is_dictionary_learning_folder(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file()


def _guess_class(state: dict[str, Tensor]) -> str | None:
    """The dictionary class from the state dict's names alone (config.json missing)."""
    if "group_sizes" in state:
        return "MatryoshkaBatchTopKSAE"
    if "gate_bias" in state:
        return "GatedAutoEncoder"
    if "threshold" in state and "W_enc" in state:
        return "JumpReluAutoEncoder"
    if "k" in state:
        return None  # AutoEncoderTopK and BatchTopKSAE save the same names
    if "decoder.bias" in state:
        return "AutoEncoderNew"
    if "bias" in state:
        return "AutoEncoder"
    return None


def _hook_from(trainer: dict) -> str | None:
    """Our alias for the usual `submodule_name`s (resid_post_layer_3 -> resid_post.3)."""
    name = str(trainer.get("submodule_name") or "")
    m = re.fullmatch(r"(resid_post|resid_pre|mlp_out|attn_out)_layer_(\d+)", name)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def load_dictionary_learning(folder: Path) -> SAE:
    path = folder / WEIGHTS_FILE
    validate.check_torch_archive(path)  # memory for the read is at most the file's size
    state = validate.read_torch_state_dict(path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} must hold a state dict of tensors.")
    # Before any tensor is copied (a view over one stored value can claim any shape).
    validate.check_tensors(state, path, integer_ok=("k", "group_sizes"))
    trainer: dict = {}
    if (folder / CONFIG_FILE).is_file():
        try:
            trainer = json.loads((folder / CONFIG_FILE).read_text()).get("trainer") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise ValueError(
                f"{folder / CONFIG_FILE} is not a dictionary_learning config."
            ) from None
        if not isinstance(trainer, dict):
            raise ValueError(f"{folder / CONFIG_FILE}: trainer must be an object.")
    dict_class = trainer.get("dict_class") or _guess_class(state)
    if dict_class not in DICT_CLASSES:
        raise ValueError(
            f"{folder} holds dictionary class {dict_class!r}; readable ones are "
            f"{', '.join(DICT_CLASSES)}."
        )
    cfg, ours = _convert(dict_class, state, trainer, path)
    declared = {
        "activation_dim": trainer.get("activation_dim"),
        "dict_size": trainer.get("dict_size"),
    }
    found = {"activation_dim": cfg.d_in, "dict_size": cfg.d_sae}
    held = f"{path} holds W_enc {[cfg.d_in, cfg.d_sae]} (in our orientation)"
    validate.check_declared(declared, found, folder / CONFIG_FILE, held)
    metadata: dict = {"source_format": "dictionary_learning", "dict_class": dict_class}
    if trainer.get("lm_name"):
        metadata["model_name"] = trainer["lm_name"]
    if _hook_from(trainer):
        metadata["hook_name"] = _hook_from(trainer)
    for key in ("layer", "submodule_name"):
        if trainer.get(key) is not None:
            metadata[key] = trainer[key]
    return assemble(cfg, ours, metadata, str(path))


def _need(state: dict[str, Tensor], path: Path, *keys: str) -> list[Tensor]:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it holds {sorted(state)}.")
    return [state[k] for k in keys]


def _convert(
    dict_class: str, state: dict[str, Tensor], trainer: dict, path: Path
) -> tuple[SAEConfig, dict[str, Tensor]]:
    kw: dict = {}
    if dict_class in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE"):
        W, b_enc, D = _need(state, path, "encoder.weight", "encoder.bias", "decoder.weight")
        ours = {"W_enc": W.T, "b_enc": b_enc, "W_dec": D.T}
        bias_key = {"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(
            dict_class, "b_dec"
        )
        (ours["b_dec"],) = _need(state, path, bias_key)
        kw["apply_b_dec_to_input"] = dict_class != "AutoEncoderNew"
        kw["architecture"] = {"AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk"}.get(
            dict_class, "relu"
        )
    elif dict_class == "GatedAutoEncoder":
        W, D, b_dec, r_mag, b_gate, b_mag = _need(
            state, path, "encoder.weight", "decoder.weight", "decoder_bias", "r_mag",
            "gate_bias", "mag_bias",
        )  # fmt: skip
        ours = {"W_enc": W.T, "W_dec": D.T, "b_dec": b_dec, "r_mag": r_mag}
        ours |= {"b_gate": b_gate, "b_mag": b_mag}
        kw |= {"architecture": "gated", "apply_b_dec_to_input": True}
    else:  # JumpReLU and Matryoshka keep SAELens names already
        keys = ("W_enc", "b_enc", "W_dec", "b_dec")
        ours = dict(zip(keys, _need(state, path, *keys), strict=True))
        if dict_class == "JumpReluAutoEncoder":
            (ours["threshold"],) = _need(state, path, "threshold")
            kw |= {"architecture": "jumprelu", "apply_b_dec_to_input": False}
        else:
            (sizes,) = _need(state, path, "group_sizes")
            kw |= {"architecture": "matryoshka", "apply_b_dec_to_input": True}
            kw["matryoshka_prefixes"] = [int(n) for n in sizes.cumsum(0).tolist()]
    ours = {k: v.contiguous() for k, v in ours.items()}
    d_in, d_sae = (int(n) for n in ours["W_enc"].shape)
    kw |= {"d_in": d_in, "d_sae": d_sae}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        k = state["k"].item() if "k" in state else trainer.get("k")
        if k is None:
            raise ValueError(f"{path} records no k (neither a 'k' tensor nor trainer.k).")
        kw["k"] = int(k)
    if dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        t = float(state["threshold"]) if "threshold" in state else -1.0
        if t < 0:
            # Never estimated: dictionary_learning's encode then keeps every positive
            # pre-activation, i.e. a plain ReLU encoder (and with a single group, a plain SAE).
            kw["architecture"] = "relu"
            kw.pop("matryoshka_prefixes", None)
        else:
            ours["threshold"] = torch.full((d_sae,), t, dtype=ours["W_enc"].dtype)
    try:
        return SAEConfig(**kw), ours
    except ValueError as e:
        raise ValueError(f"{path} describes an invalid {dict_class}: {e}") from None
