"""What the analysis suites (redundancy, capacity, descramble) need beyond the activation rows:
each latent's usage over the scored rows (memoised per SAE, so the suites stream it once), the
SAE's block in its model and that block's MLP weights, and activations along input-embedding
interpolation paths (docs/methods.md#random-projection-hurst-test).

Which block reads a hook is decided in one place, `reading_block` (resid_post.N -> block N+1,
resid_pre.N -> block N); the capacity, descramble and interaction suites all use it.

MLP input weights by family (rows = the neurons' read vectors, [d_mlp, d_model];
docs/methods.md#neuron-polysemanticity):
BERT `intermediate.dense` (nn.Linear), GPT-2 `mlp.c_fc` (Conv1D, stored [d_model, d_mlp], so
transposed), GPT-NeoX `mlp.dense_h_to_4h`, Llama/Gemma/Qwen `mlp.gate_proj` (the input of the
nonlinearity; `up_proj` is reported beside it). Found by module name under the SAE's block, so
any model whose blocks use one of these names works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sae.activations.capture import ActivationCapture, hook_aliases, resolve_device, resolve_hooks
from sae.eval.base import EvalContext, EvalTarget
from sae.eval.stream import rows

# (module name under the block, stored as [d_model, d_mlp] i.e. Conv1D)
_MLP_IN = (
    ("intermediate.dense", False),  # BERT family
    ("mlp.c_fc", True),  # GPT-2 (Conv1D)
    ("mlp.dense_h_to_4h", False),  # GPT-NeoX / Pythia
    ("mlp.gate_proj", False),  # Llama, Mistral, Gemma, Qwen, ...
    ("mlp.fc_in", False),  # GPT-J
    ("mlp.fc1", False),  # Phi, OPT-style
)


class LatentUsage(NamedTuple):
    mean_sq_M: Tensor
    """E[a_k²] over the scored rows, float64 (docs/methods.md#usage-weighted-capacity)."""
    fired_M: Tensor
    """rows on which latent k was nonzero."""
    n: int
    """rows scored."""

    @property
    def dead_M(self) -> Tensor:
        return self.fired_M == 0


class MLPRead(NamedTuple):
    block: int
    """the block that reads the hook (`reading_block`)."""
    module: str
    """module path of the MLP input linear; its output is the preactivation."""
    kind: str
    """which of the names above matched (e.g. 'mlp.c_fc')."""
    W_HD: Tensor
    """read vectors, one row per neuron [d_mlp, d_model], float32 on CPU."""
    b_H: Tensor | None
    extra: dict[str, Tensor]
    """other read weights of the same neurons (Llama 'mlp.up_proj')."""


def model_of(target: EvalTarget) -> nn.Module | None:
    """The loaded model of a live target; None for activation files and synthetic data."""
    return target.source.capture.model if target.stream == "live" else None


def usage_key(target: EvalTarget, ctx: EvalContext) -> tuple:
    return ("latent_usage", target.name, ctx.eval_tokens)


def latent_usage(target: EvalTarget, ctx: EvalContext) -> LatentUsage:
    """E[a²] and firing counts over the scored rows; streamed once per SAE, then memoised."""
    key = usage_key(target, ctx)
    if key in ctx.memo:
        return ctx.memo[key]
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    sum_sq = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
    fired = torch.zeros_like(sum_sq)
    n = 0
    with torch.no_grad():
        for b in rows(target, ctx.eval_tokens):
            a_NM = sae.encode(b.x_ND.to(device)).double()
            sum_sq += a_NM.pow(2).sum(0)
            fired += (a_NM != 0).sum(0)
            n += len(a_NM)
    usage = LatentUsage((sum_sq / max(n, 1)).cpu(), fired.cpu(), n)
    ctx.memo[key] = usage
    return usage


class ReadingBlock(NamedTuple):
    blocks: str
    """module path of the model's block list."""
    index: int
    """the block that reads the hook's stream."""
    why: str
    """one phrase for reports: 'block 4 reads resid_post.3'."""


def reading_block(model: nn.Module, hook: str) -> ReadingBlock | None:
    """The block whose computation reads the stream at `hook` — the one place this is decided.

    `resid_pre.N` (block N's input) is read by block N; `resid_post.N` (block N's output) and
    `mlp_out.N` (added into it) by block N+1; `attn_out.N` by block N's own MLP; any other
    module inside block N by block N [inferred]. None for the last block's output, embeddings, the
    final norm, or a model whose block list sae.activations.capture cannot find."""
    aliases = hook_aliases(model)
    if "resid_post.0" not in aliases:
        return None
    blocks = aliases["resid_post.0"].module.rsplit(".", 1)[0]
    n_layers = sum(1 for k in aliases if k.startswith("resid_post."))
    point = resolve_hooks(model, [hook])[0]
    if not point.module.startswith(blocks + "."):
        return None
    i = int(point.module[len(blocks) + 1 :].split(".")[0])
    kind = next(
        (
            k.rsplit(".", 1)[0]
            for k, p in aliases.items()
            if (p.module, p.io) == (point.module, point.io)
        ),
        None,
    )
    reader = i + 1 if kind in ("resid_post", "mlp_out") else i
    if reader >= n_layers:
        return None
    return ReadingBlock(blocks, reader, f"block {reader} reads {hook}")


def mlp_read(model: nn.Module, hook: str) -> MLPRead | None:
    """The MLP input weights of the block that reads the SAE's hook (`reading_block`). None when
    no block reads it or no known MLP is found."""
    found = reading_block(model, hook)
    if found is None:
        return None
    blocks, i, _ = found
    modules = dict(model.named_modules())
    for name, conv1d in _MLP_IN:
        path = f"{blocks}.{i}.{name}"
        if path not in modules:
            continue
        mod = modules[path]
        W = mod.weight.detach().float().cpu()
        W_HD = W.T.contiguous() if conv1d else W
        b = getattr(mod, "bias", None)
        extra = {}
        up = f"{blocks}.{i}.mlp.up_proj"
        if name == "mlp.gate_proj" and up in modules:
            extra["mlp.up_proj"] = modules[up].weight.detach().float().cpu()
        b_H = None if b is None else b.detach().float().cpu()
        return MLPRead(i, path, name, W_HD, b_H, extra)
    return None


class PathActs(NamedTuple):
    acts: dict[str, Tensor]
    """hook name -> [C, T, d] float32: C = paths × positions curves of T points each."""
    n_paths: int
    positions: int
    tokens: int
    """tokens per window on the paths."""


def embedding_paths(
    target: EvalTarget,
    n_paths: int,
    points: int,
    tokens: int,
    positions: int,
    batch: int = 64,
) -> PathActs | str:
    """Activations at the SAE's hook(s) along paths e(t) = (1 − t)·E[w₁] + t·E[w₂], t ∈ [0, 1],
    between the input embeddings of two held-out windows w₁, w₂ cut to `tokens` tokens
    (docs/methods.md#random-projection-hurst-test, step 1): the embedding module's output is
    replaced by e(t) with a forward hook and the model runs on to the hook. Each path contributes
    `positions` token positions (kept, i.e. not BOS/special, in both windows, evenly spaced) as
    separate curves. A string says why not.
    """
    model = model_of(target)
    if model is None:
        return f"activations come from a {target.stream} source, so there is no model to run"
    if n_paths < 1 or points < 2:
        return f"{n_paths} paths of {points} points requested"
    emb = model.get_input_embeddings()
    if emb is None:
        return f"model {type(model).__name__} exposes no input embedding module"
    src = target.source
    hooks = [h for h in target.source_hooks if h]
    wins = []
    for _, w_T in src.windows.iter_from(0):
        wins.append(w_T[:tokens])
        if len(wins) == 2 * n_paths:
            break
    if len(wins) < 2:
        return f"the held-out data has {len(wins)} window(s); paths need two"
    capture = ActivationCapture(model, hooks)
    device = capture.device
    t_T = torch.linspace(0.0, 1.0, points)
    curves: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for p in range(len(wins) // 2):
        w1, w2 = wins[2 * p], wins[2 * p + 1]
        keep = (src.keep_mask(w1[None]) & src.keep_mask(w2[None]))[0].nonzero().flatten()
        if len(keep) == 0:
            continue
        pos = keep[torch.linspace(0, len(keep) - 1, min(positions, len(keep))).round().long()]
        with torch.inference_mode():
            e1, e2 = (emb(w[None].to(device))[0].float() for w in (w1, w2))
        out: dict[str, list[Tensor]] = {h: [] for h in hooks}
        for s in range(0, points, batch):
            t_B = t_T[s : s + batch].to(device)[:, None, None]
            e_BTE = (1 - t_B) * e1 + t_B * e2
            handle = emb.register_forward_hook(lambda m, i, o, e=e_BTE: e.to(o.dtype))
            try:
                acts = capture(w1[None].expand(len(t_B), -1))
            finally:
                handle.remove()
            for h in hooks:
                out[h].append(acts[h][:, pos.to(acts[h].device)].float().cpu())
        for h in hooks:
            curves[h].append(torch.cat(out[h]).transpose(0, 1))  # [positions, T, d]
    if not curves[hooks[0]]:
        return "no token position is kept (non-special) in both windows of any pair"
    acts = {h: torch.cat(c) for h, c in curves.items()}
    return PathActs(acts, len(curves[hooks[0]]), positions, int(wins[0].shape[0]))


class BlockCall(NamedTuple):
    """One forward of the reading block, replayable on other inputs (for Jacobians)."""

    x_BTD: Tensor
    """the block's input hidden states (the hook's stream), float32."""
    y_BTD: Tensor
    """its output hidden states."""
    call: Callable[[Tensor], Tensor]
    """x -> block output hidden states, with the same masks/positions as the captured forward."""
    extra: dict[str, Tensor]
    """outputs of the extra modules asked for (e.g. the MLP preactivation), [B, T, h]."""


class _Stop(Exception):
    pass


def block_call(model: nn.Module, rb: ReadingBlock, ids_BT: Tensor, extra: list[str]) -> BlockCall:
    """Run the model up to the end of block `rb.index` once, record the arguments HF passes to that
    block (attention masks, rotary position embeddings, ...), and return a replayable call. The
    forward stops after the block (the rest of the model is not run)."""
    modules = dict(model.named_modules())
    block = modules[f"{rb.blocks}.{rb.index}"]
    seen: dict[str, Any] = {}

    def pre(m, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    def post(m, i, o):
        seen["out"] = o
        raise _Stop

    handles = [
        block.register_forward_pre_hook(pre, with_kwargs=True),
        block.register_forward_hook(post),
    ]

    def record(name: str):
        # Returns None: a forward hook's return value replaces the module's output, and a float32
        # copy in a bfloat16 model broke the next matmul ("mat1 and mat2 must have the same dtype").
        def hook(m, i, o) -> None:
            seen.setdefault(name, _first(o).detach().float())

        return hook

    for name in extra:
        handles.append(modules[name].register_forward_hook(record(name)))
    ids = ids_BT.to(next(model.parameters()).device)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    args, kwargs = seen["args"], dict(seen["kwargs"])
    x = (args[0] if args else kwargs.pop("hidden_states")).detach()

    def call(h_BTD: Tensor) -> Tensor:
        return _first(block(h_BTD.to(x.dtype), *args[1:], **kwargs)).to(h_BTD.dtype)

    return BlockCall(
        x.float(), _first(seen["out"]).detach().float(), call, {n: seen[n] for n in extra}
    )


def _first(value) -> Tensor:
    return value if isinstance(value, Tensor) else _first(value[0])
