"""Folders written by EleutherAI's sparsify (`SparseCoder.save_to_disk`), read without it.

One folder per hookpoint, named after it (`layers.6`, `layers.6.mlp`, paths inside the model's
base model): `cfg.json` (SparseCoderConfig fields plus `d_in`) and `sae.safetensors`
(`encoder.weight [S, D]`, `encoder.bias [S]`, `W_dec [S, D]`, `b_dec [D]`, optional
`W_skip [D, D]`). The run's `config.json` one level up names the model.

sparsify's encoder is `topk(relu(x' @ W.T + b))` with x' = x - b_dec for an autoencoder and
x' = x for a transcoder; relu and topk commute, so our TopK SAE computes the same latents.
"""

from __future__ import annotations

import json
from pathlib import Path

from sae.config import ConfigError
from sae.io import validate
from sae.io.build import assemble
from sae.model.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG = "config.json"


def is_sparsify_folder(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _check_sizes(raw: dict, enc: tuple[int, ...], where: Path, weights: Path) -> None:
    """cfg.json's d_in, and num_latents (0: expansion_factor x d_in, as sparsify sizes it),
    match encoder.weight [num_latents, d_in] in the weights' header."""
    if len(enc) != 2:
        raise ConfigError(f"{weights}: encoder.weight has shape {list(enc)}; it must be 2-D.")
    for key in ("d_in", "num_latents", "expansion_factor"):
        v = raw.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"{where}: {key}={v!r} must be a whole number >= 0.")
    d_in = raw.get("d_in")
    latents = raw.get("num_latents") or None
    if latents is None and raw.get("expansion_factor") and isinstance(d_in, int):
        latents = raw["expansion_factor"] * d_in
    held = f"{weights} holds encoder.weight {list(enc)}"
    found = {"d_in": enc[1], "num_latents": enc[0]}
    validate.check_declared({"d_in": d_in, "num_latents": latents}, found, where, held)


def load_sparsify(folder: Path) -> SAE:
    where = folder / CFG_FILE
    weights = folder / WEIGHTS_FILE
    raw = validate.read_json(where)
    if raw.get("activation", "topk") != "topk":
        raise ValueError(
            f"{where} has activation={raw['activation']!r}; only sparsify's 'topk' coders load "
            "(groupmax has no equivalent here)."
        )
    shapes = validate.safetensors_shapes(weights)
    for key in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if key not in shapes:
            raise ValueError(f"{weights} has no {key!r}; it holds {sorted(shapes)}.")
    _check_sizes(raw, shapes["encoder.weight"], where, weights)
    state = validate.read_safetensors(weights)
    validate.check_tensors(state, weights)
    W_enc = state["encoder.weight"].T.contiguous()
    b_enc, W_dec, b_dec = state["encoder.bias"], state["W_dec"], state["b_dec"]
    d_in, d_sae = (int(n) for n in W_enc.shape)
    transcode = bool(raw.get("transcode", False))
    skip = "W_skip" in state
    kw: dict = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": int(raw["k"])}
    ours = {"W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec}
    if transcode or skip:
        # Our transcoder never subtracts b_dec from x; an autoencoder with a skip that does is
        # the same map with the centring moved into the bias: (x - b_dec) W + b = x W + b'.
        kw |= {"d_out": int(W_dec.shape[1]), "skip_connection": skip}
        ours["b_enc"] = b_enc if transcode else b_enc - b_dec @ W_enc
        if skip:
            ours["W_skip"] = state["W_skip"]
    else:
        kw["apply_b_dec_to_input"] = True
        ours["b_enc"] = b_enc
    try:
        cfg = SAEConfig(**kw)
    except ValueError as e:
        raise ValueError(f"{where} describes an invalid sparse coder: {e}") from None

    hookpoint = folder.name
    metadata: dict = {"source_format": "sparsify", "sparsify_hookpoint": hookpoint}
    if transcode:  # sparsify transcoders read a module's input and predict its output
        metadata |= {"hook_name": f"{hookpoint}:input", "target_hook_name": hookpoint}
    else:
        metadata["hook_name"] = hookpoint
    run_cfg = folder.parent / RUN_CONFIG
    if run_cfg.is_file():
        try:
            run = json.loads(run_cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            run = {}
        if isinstance(run, dict) and isinstance(run.get("model"), str):
            metadata["model_name"] = run["model"]
    return assemble(cfg, ours, metadata, str(folder / WEIGHTS_FILE))
