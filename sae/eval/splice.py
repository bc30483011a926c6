"""Run a model with activations captured, or replaced, at hook points; downstream losses.

Hooks follow sae/activations/capture.py (module path + output, or ':input' through a forward pre-hook). A
replacement swaps the hooked tensor for a given one, so "the SAE spliced in" is: clean pass ->
reconstruct -> second pass with the reconstruction in place of the activation at the positions
the SAE was trained on (the caller keeps the clean values elsewhere, e.g. at BOS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae.activations.capture import HookPoint

ModelKind = Literal["causal_lm", "encoder"]
Replace = tuple[HookPoint, Callable[[Tensor], Tensor]]
"""(hook point, fn): the hooked tensor [B, T, d] is swapped for fn(tensor)."""


def model_kind(model: nn.Module) -> ModelKind:
    """Causal LMs (loaded with their LM head by sae.activations.capture.load_model) give logits; else encoder."""
    name = type(model).__name__
    return "causal_lm" if name.endswith(("ForCausalLM", "LMHeadModel")) else "encoder"


class ForwardResult(NamedTuple):
    acts: dict[str, Tensor]
    """hook name -> captured activation [B, T, d] (clean, or as it was before replacement)."""
    out: Tensor
    """logits [B, T, V] for causal LMs, last hidden state [B, T, D] for encoders."""


def _first(value) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list):
        return _first(value[0])
    if isinstance(value, dict):
        return _first(next(iter(value.values())))
    raise TypeError(f"hook saw {type(value).__name__}, not a tensor")


def _with_first(value, new: Tensor):
    """`value` with its first tensor replaced by `new` (tensor, tuple, list or ModelOutput)."""
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple | list):
        return type(value)([_with_first(value[0], new), *value[1:]])
    if isinstance(value, dict):
        key = next(iter(value))
        out = value.copy()
        out[key] = _with_first(value[key], new)
        return out
    raise TypeError(f"hook saw {type(value).__name__}, not a tensor")


@contextmanager
def _hooks(
    model: nn.Module,
    capture: list[HookPoint],
    replace: Replace | None,
    store: dict[str, Tensor],
) -> Iterator[None]:
    modules = dict(model.named_modules())
    handles = []

    def on_output(point: HookPoint, fn: Callable | None):
        def hook(module, args, output):
            value = _first(output)
            store.setdefault(point.name, value.detach())
            return None if fn is None else _with_first(output, fn(value))

        return hook

    def on_input(point: HookPoint, fn: Callable | None):
        def hook(module, args, kwargs):
            if args:
                value = _first(args)
                store.setdefault(point.name, value.detach())
                return (
                    None if fn is None else ((_with_first(args[0], fn(value)), *args[1:]), kwargs)
                )
            value = kwargs["hidden_states"]
            store.setdefault(point.name, value.detach())
            return None if fn is None else (args, {**kwargs, "hidden_states": fn(value)})

        return hook

    todo = [(p, None) for p in capture] + ([replace] if replace is not None else [])
    try:
        for point, fn in todo:
            module = modules[point.module]
            if point.io == "input":
                h = module.register_forward_pre_hook(on_input(point, fn), with_kwargs=True)
            else:
                h = module.register_forward_hook(on_output(point, fn))
            handles.append(h)
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def forward(
    model: nn.Module,
    ids_BT: Tensor,
    capture: list[HookPoint] | tuple = (),
    replace: Replace | None = None,
) -> ForwardResult:
    """One full forward pass, capturing `capture` and applying `replace`."""
    store: dict[str, Tensor] = {}
    device = next(model.parameters()).device
    ids = ids_BT.to(device)
    with _hooks(model, list(capture), replace, store):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    main = out.logits if model_kind(model) == "causal_lm" else out.last_hidden_state
    return ForwardResult(store, main)


# ---- downstream quantities, per window ------------------------------------------------------


def next_token_ce(logits_BTV: Tensor, ids_BT: Tensor) -> Tensor:
    """Summed next-token cross-entropy per window [B] (nats), over the T - 1 predictions."""
    B, T, V = logits_BTV.shape
    ce = F.cross_entropy(
        logits_BTV[:, :-1].reshape(-1, V).float(),
        ids_BT[:, 1:].reshape(-1).to(logits_BTV.device),
        reduction="none",
    )
    return ce.view(B, T - 1).double().sum(1)


def kl_clean_spliced(clean_BTV: Tensor, spliced_BTV: Tensor, rows: int = 4) -> Tensor:
    """Summed KL(clean || spliced) of the next-token distributions per window [B] (nats).

    The direction is the clean run's distribution against the spliced one,
    Σ_v p_clean (log p_clean - log p_spliced), as in SAELens's `kl_div` metric; done `rows`
    windows at a time to bound the float32 [rows, T, V] temporaries."""
    out = []
    for s in range(0, clean_BTV.shape[0], rows):
        lp = F.log_softmax(clean_BTV[s : s + rows].float(), -1)
        lq = F.log_softmax(spliced_BTV[s : s + rows].float(), -1)
        out.append((lp.exp() * (lp - lq)).sum(-1).double().sum(1))
    return torch.cat(out)


def embedding_cosines(
    clean_BTD: Tensor, spliced_BTD: Tensor, mask_BT: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(Σ_t cos of final hidden states per window [B], counted positions [B], cosine of the
    mask-aware mean-pooled sentence embeddings [B]) — sentence-transformers' mean pooling."""
    if mask_BT is None:
        mask_BT = torch.ones(clean_BTD.shape[:2], dtype=torch.bool, device=clean_BTD.device)
    m = mask_BT.to(clean_BTD.device, torch.float32)
    a, b = clean_BTD.float(), spliced_BTD.float()
    tok_cos = (F.cosine_similarity(a, b, dim=-1) * m).double().sum(1)
    denom = m.sum(1, keepdim=True).clamp_min(1)
    pa = (a * m[..., None]).sum(1) / denom
    pb = (b * m[..., None]).sum(1) / denom
    return tok_cos, m.double().sum(1), F.cosine_similarity(pa, pb, dim=-1).double()
