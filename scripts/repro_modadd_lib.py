"""LIB against PCA and neurons on a one-layer modular-addition transformer (Bushnaq et al. 2024,
arXiv 2405.10928, whose mod-add experiment this follows; definitions: docs/methods.md#interaction-basis).

Run (CPU; the first run trains and caches the weights, a rerun loads them; timings in
BENCHMARKS.md):

    python scripts/repro_modadd_lib.py                    # the paper's model, 30% train split
    python scripts/repro_modadd_lib.py --train-frac 0.6   # groks in fewer epochs (see BENCHMARKS)
    python scripts/repro_modadd_lib.py --lib-target output   # M′ towards the logits (IB)

Model (the LIB paper's config): tokens (a, b, =) with p = 113, d_model 128, 4 heads × 32, d_mlp
512, ReLU, no LayerNorm, untied unembedding, no attention biases. Trained full batch on a random
`--train-frac` (30%) of the p² pairs with AdamW (lr 1e-3, weight decay 1.0, betas 0.9/0.98: the
grokking setup of Nanda et al. 2023 [the LIB config uses Adam; weight decay makes it generalise
in far fewer epochs]) until it is ≥ `--target` (99.9%) accurate on all p² pairs, or `--epochs`
or `--train-minutes` (CPU time) run out. Training uses `ModAdd.forward_fast`, the same function
computed through per-operand tables (attention is linear up to its softmax and the `=` query is fixed), one
torch thread (fastest on a shared 2-core machine), fused AdamW, and checks the accuracy every
`--eval-every` epochs. Every 1,000 epochs the model and optimiser state are saved, so an
interrupted run resumes where it stopped. Weights are cached in
checkpoints/modadd_p113_<shape>/ (safetensors + train.json with epochs, seconds and load).

Node layers (folded, constant first): the embeddings at the 3 positions, the residual stream at
`=` after attention, after the MLP, and the logits (centred PCA, the fixed output basis). Sections
are folded homogeneously (`perspective`), so single-point gradients are exact. Per basis family
(LIB, built backwards with M′ exact; PCA; neurons) and section, the script reports the edges
needed (fewest kept edges, the rest ablated, for the accuracy on `--ablate-samples` pairs to drop
by ≤ `--tol`; bisection on a 40-point log grid, so an upper bound at that resolution), the
directions needed at each node layer (same tolerance), the §C.4 proxies, and the Leiden modules
of the whole graph (γ = 0.5 as in the paper, and 1; log-normalised weights). Table on stdout and
in a JSON; figure: edge-mass curves per section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from sae.analysis.interaction_basis import fold
from sae.analysis.interaction_graph import keep_mask, leiden, mass_curve, min_kept, sparsity
from sae.analysis.interaction_jacobian import chain_bases, edge_sums, ig_rows, perspective
from sae.eval import plots
from sae.fsutil import atomic_save_safetensors, atomic_write, atomic_write_json, claim, remove


class ModAdd(nn.Module):
    """One attention layer (query at `=` only) and one ReLU MLP, no LayerNorm."""

    def __init__(self, p: int, d: int, heads: int, d_head: int, d_mlp: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def w(*shape, fan):
            return nn.Parameter(torch.randn(*shape, generator=g) / math.sqrt(fan))

        self.p, self.heads = p, heads
        self.W_E, self.W_pos = w(p + 1, d, fan=d), w(3, d, fan=d)
        self.W_Q, self.W_K, self.W_V = (w(heads, d, d_head, fan=d) for _ in range(3))
        self.W_O = w(heads, d_head, d, fan=heads * d_head)
        self.W_in, self.b_in = w(d, d_mlp, fan=d), nn.Parameter(torch.zeros(d_mlp))
        self.W_out, self.b_out = w(d_mlp, d, fan=d_mlp), nn.Parameter(torch.zeros(d))
        self.W_U = w(d, p, fan=d)

    def embed(self, ab_N2: torch.Tensor) -> torch.Tensor:
        tok = torch.cat([ab_N2, torch.full_like(ab_N2[:, :1], self.p)], 1)
        return self.W_E[tok] + self.W_pos

    def attn(self, x_NTD: torch.Tensor) -> torch.Tensor:
        """Residual at the last position after attention: [N, 1, d]."""
        q = torch.einsum("nd,hde->nhe", x_NTD[:, -1], self.W_Q)
        k = torch.einsum("ntd,hde->nhte", x_NTD, self.W_K)
        v = torch.einsum("ntd,hde->nhte", x_NTD, self.W_V)
        att = (torch.einsum("nhe,nhte->nht", q, k) / math.sqrt(q.shape[-1])).softmax(-1)
        z = torch.einsum("nht,nhte->nhe", att, v)
        return (x_NTD[:, -1] + torch.einsum("nhe,hed->nd", z, self.W_O))[:, None]

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U

    def sections(self):
        return [self.attn, self.mlp, self.unembed]

    def forward(self, ab_N2: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.mlp(self.attn(self.embed(ab_N2))))[:, 0]

    def forward_fast(self, ab_N2: torch.Tensor) -> torch.Tensor:
        """`forward` computed through per-token tables, for training (same function).

        Attention is linear up to the softmax and the residual at position t is
        W_E[token] + W_pos[t] with the token `=` fixed at the last position. So the query is
        one vector per head, and keys, values and W_O-mapped values are tables with one row per
        operand value. A sample then costs three gathers and a 3-way softmax per head instead of
        [3, d] × [d, d] projections, which leaves the MLP as the dominant cost.
        """
        p, d_head = self.p, self.W_Q.shape[-1]
        res = self.W_E[:p, None] + self.W_pos[None, :2]  # [p, 2, d]: operands at positions 0, 1
        eq = self.W_E[p] + self.W_pos[2]  # [d]: `=` at position 2
        q = torch.einsum("d,hde->he", eq, self.W_Q) / math.sqrt(d_head)
        s_op = torch.einsum("ptd,hde,he->pth", res, self.W_K, q)  # [p, 2, h]
        s_eq = torch.einsum("d,hde,he->h", eq, self.W_K, q)
        vo_op = torch.einsum("ptd,hde,hef->pthf", res, self.W_V, self.W_O)  # [p, 2, h, d]
        vo_eq = torch.einsum("d,hde,hef->hf", eq, self.W_V, self.W_O)
        a, b = ab_N2[:, 0], ab_N2[:, 1]
        s = torch.stack([s_op[a, 0], s_op[b, 1], s_eq.expand(len(a), -1)], -1)  # [N, h, 3]
        w = s.softmax(-1)
        z = (
            (w[..., 0, None] * vo_op[a, 0]).sum(1)
            + (w[..., 1, None] * vo_op[b, 1]).sum(1)
            + w[..., 2] @ vo_eq
        )
        return self.unembed(self.mlp((eq + z)[:, None]))[:, 0]


def data(p: int, frac: float, seed: int):
    ab = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    y = (ab[:, 0] + ab[:, 1]) % p
    perm = torch.randperm(len(ab), generator=torch.Generator().manual_seed(seed))
    return ab, y, perm[: int(frac * len(ab))]


def train_or_load(args) -> tuple[ModAdd, dict]:
    shape = f"d{args.d_model}_mlp{args.d_mlp}_f{args.train_frac}_s{args.seed}"
    folder = Path(args.checkpoints) / f"modadd_p{args.p}_{shape}"
    model = ModAdd(args.p, args.d_model, args.heads, args.d_model // args.heads, args.d_mlp,
                   args.seed)  # fmt: skip
    ab, y, tr = data(args.p, args.train_frac, args.seed)
    if (folder / "model.safetensors").is_file():
        model.load_state_dict(load_file(folder / "model.safetensors"))
        info = json.loads((folder / "train.json").read_text())
        print(f"loaded {folder} (trained {info['epochs']} epochs, accuracy {info['accuracy']:.4f})")
        if info["accuracy"] < args.target:
            print(f"warning: the cached model is below the target accuracy {args.target}")
        return model, info
    dev = torch.device(args.device)
    with torch.no_grad():  # the training forward must be the analysed function
        diff = (model(ab[:256]) - model.forward_fast(ab[:256])).abs().max().item()
    assert diff < 1e-4, f"forward_fast differs from forward by {diff}"
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98),
                            fused=dev.type == "cpu")  # fmt: skip
    state_path, start, spent, cpu_spent = folder / "train_state.pt", 0, 0.0, 0.0
    if state_path.is_file():  # resume an interrupted run
        st = torch.load(state_path, map_location=dev, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start, spent, cpu_spent = st["epoch"], st["seconds"], st.get("cpu_seconds", 0.0)
        print(f"resuming {state_path} at epoch {start}")
    ab_d, y_d = ab.to(dev), y.to(dev)
    x_tr, y_tr = ab_d[tr.to(dev)], y_d[tr.to(dev)]
    load0, t0, acc, epoch = os.getloadavg()[0], time.perf_counter(), 0.0, start
    cpu0 = time.process_time() - cpu_spent
    for epoch in range(start + 1, args.epochs + 1):
        loss = nn.functional.cross_entropy(model.forward_fast(x_tr), y_tr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        with torch.no_grad():
            acc = float((model.forward_fast(ab_d).argmax(-1) == y_d).float().mean())
        seconds = spent + time.perf_counter() - t0
        if epoch % (10 * args.eval_every) == 0 or acc >= args.target:
            print(f"epoch {epoch}: train loss {loss.item():.3g}, accuracy (all p²) {acc:.4f}, "
                  f"{seconds:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
            claim(folder, "model")
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                     "seconds": seconds, "cpu_seconds": time.process_time() - cpu0}  # fmt: skip
            atomic_write(state_path, lambda tmp, state=state: torch.save(state, tmp))
        if acc >= args.target or time.process_time() - cpu0 > 60 * args.train_minutes:
            break
    with torch.no_grad():  # also when a resumed run had no epochs left
        acc = float((model.forward_fast(ab_d).argmax(-1) == y_d).float().mean())
    model.cpu()
    seconds = spent + time.perf_counter() - t0
    info = {"epochs": epoch, "accuracy": acc, "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu0, "device": args.device,
            "threads": torch.get_num_threads(), "train_frac": args.train_frac,
            "load_average": [load0, os.getloadavg()[0]]}  # fmt: skip
    atomic_save_safetensors(folder / "model.safetensors", {k: v.detach().contiguous()
                            for k, v in model.state_dict().items()}, {})  # fmt: skip
    atomic_write_json(folder / "train.json", info)
    remove(state_path, "model")
    print(f"trained {epoch} epochs in {seconds:.0f} s wall, {info['cpu_seconds']:.0f} s CPU: "
          f"accuracy {acc:.4f} on all p² pairs")  # fmt: skip
    return model, info


def layers(model: ModAdd, ab: torch.Tensor) -> list[torch.Tensor]:
    """Folded node layers (float64) for inputs ab: [N, T, F]."""
    with torch.no_grad():
        x = [model.embed(ab).double()]
        for s in model.sections():
            x.append(s(x[-1]))
    return [fold(v) for v in x]


def build(model: ModAdd, fs: list[torch.Tensor], family: str, chunk: int, target: str) -> list:
    """Bases of every node layer of one family; the logits always in centred PCA."""
    secs = [perspective(s) for s in model.sections()]
    return chain_bases(secs, fs, target=target, family=family, centre=True, batch=chunk)


def edges(model: ModAdd, fs, bases, chunk: int) -> list[torch.Tensor]:
    out, t = [], torch.tensor([0])
    for li, sec in enumerate(model.sections()):
        sec = perspective(sec)
        E, n = 0.0, 0
        for s in range(0, len(fs[li]), chunk):
            f = fs[li][s : s + chunk]
            es = edge_sums(ig_rows(sec, f, bases[li + 1].C_FK, t), f, bases[li], t)
            E, n = E + es.E_KoKi, n + es.n
        out.append(E / n)
    return out


def accuracy_from(model: ModAdd, li: int, f_NTF: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy when node layer li is replaced by f̃ (folded) and the network runs on."""
    x = f_NTF[..., 1:]
    with torch.no_grad():
        for s in model.sections()[li:]:
            x = s(x)
    return float((x[:, 0].argmax(-1) == y).float().mean())


def ablation(model, fs, bases, E, y, tol: float) -> tuple[list[dict], list[dict]]:
    """Edges needed per section and directions needed per node layer (accuracy drop ≤ tol)."""
    base_acc = accuracy_from(model, 0, fs[0], y)
    edge_res, dir_res = [], []
    for li in range(len(E)):
        e, d = _ablate_layer(model, li, fs[li], bases[li], bases[li + 1], E[li], y, base_acc, tol)
        edge_res.append(e)
        dir_res.append(d)
    return edge_res, dir_res


def _ablate_layer(model, li, f, b_in, b_out, El, y, base_acc, tol) -> tuple[dict, dict]:
    sec = perspective(model.sections()[li])
    fhat = f @ b_in.C_FK
    grid = mass_curve(El, points=40)["k"]

    def drop(i: int) -> float:
        keep = keep_mask(El, grid[i], True, True).double()
        g = torch.zeros(fhat.shape[0], 1, b_out.k, dtype=torch.float64)
        with torch.no_grad():
            for o in range(b_out.k):
                g[:, :, o] = sec((fhat * keep[o]) @ b_in.Cplus_KF) @ b_out.C_FK[:, o]
        return base_acc - accuracy_from(model, li + 1, g @ b_out.Cplus_KF, y)

    i, _ = min_kept(drop, len(grid) - 1, tol)
    n_edges = (El.shape[0] - 1) * (El.shape[1] - 1)
    kept = El[1:, 1:].flatten().sort(descending=True).values
    edges = {"k": grid[i], "fraction": grid[i] / n_edges, "edges": n_edges,
             "smallest_kept": float(kept[grid[i] - 1])}  # fmt: skip
    order = b_in.Lambda_K[1:].argsort(descending=True) + 1

    def ddrop(r: int) -> float:
        keep = torch.zeros(b_in.k, dtype=torch.float64)
        keep[0], keep[order[:r]] = 1, 1
        return base_acc - accuracy_from(model, li, (fhat * keep) @ b_in.Cplus_KF, y)

    r, _ = min_kept(ddrop, b_in.k - 1, tol)
    return edges, {"directions": r, "of": b_in.k - 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--p", type=int, default=113)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-mlp", type=int, default=512)
    p.add_argument("--train-frac", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=60_000, help="max full-batch epochs")
    p.add_argument("--target", type=float, default=0.999, help="stop at this accuracy (all p²)")
    p.add_argument(
        "--train-minutes", type=float, default=60.0, help="stop training after this much CPU time"
    )
    p.add_argument("--eval-every", type=int, default=100, help="epochs between accuracy checks")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest when shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--samples", type=int, default=4096, help="pairs for Grams, M′ and edges")
    p.add_argument("--ablate-samples", type=int, default=2000)
    p.add_argument("--tol", type=float, default=0.001, help="accuracy drop allowed")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument(
        "--lib-target",
        choices=["next_layer", "output"],
        default="next_layer",
        help="LIB's M′ towards the next layer's LIB (LIB) or the logits (IB)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/repro/modadd_lib.png"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # weight decay drives weights towards denormal values
    t0 = time.perf_counter()
    model, info = train_or_load(args)
    model.eval().double()
    ab, y, _ = data(args.p, args.train_frac, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randperm(len(ab), generator=g)
    fs = layers(model, ab[idx[: args.samples]])
    abl = idx[-args.ablate_samples :]  # disjoint from the analysed pairs when p² allows
    fa = layers(model, ab[abl])
    names = ["embed (3 pos)", "attn out (=)", "mlp out (=)", "logits"]
    res, curves = {}, {}
    for family in ("lib", "pca", "neuron"):
        bases = build(model, fs, family, args.chunk, args.lib_target)
        E = edges(model, fs, bases, args.chunk)
        er, dr = ablation(model, fa, bases, E, y[abl], args.tol)
        eps = [e["smallest_kept"] for e in er]
        ld = {g: leiden([b.k for b in bases], E, eps=eps, gamma=g) for g in (0.5, 1.0)}
        for v in ld.values():
            del v["membership"]
        res[family] = {"edges_needed": er, "directions_needed": dr, "leiden": ld,
                       "sparsity": [sparsity(e) for e in E],
                       "nodes": [b.k - 1 for b in bases]}  # fmt: skip
        curves[family] = [mass_curve(e) for e in E]
        print(f"{family}: built in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nmod-add p={args.p}: accuracy {info['accuracy']:.4f} after {info['epochs']} epochs; "
          f"tolerance {args.tol} on {len(abl)} held pairs")  # fmt: skip
    print(
        "| section | basis | nodes in | edges needed | of | fraction | k_0.9 | Gini | directions needed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for li in range(3):
        for fam, r in res.items():
            e, d, s = r["edges_needed"][li], r["directions_needed"][li], r["sparsity"][li]
            print(f"| {names[li]} → {names[li + 1]} | {fam} | {r['nodes'][li]} | {e['k']:,} | "
                  f"{e['edges']:,} | {e['fraction']:.3g} | {s['k_90']:,} | {s['gini']:.3f} | "
                  f"{d['directions']} |")  # fmt: skip
    for fam, r in res.items():
        for g, ld in r["leiden"].items():
            print(f"Leiden ({fam}, γ = {g}): Q = {ld['modularity_q']:.3f}, {ld['n_clusters']} "
                  f"clusters, sizes {ld['sizes'][:8]}, spans {ld['spans'][:8]}")  # fmt: skip
    fig, axes = plots.plt.subplots(1, 3, figsize=(12, 3.6))
    for li, ax in enumerate(axes):
        for fam, cs in curves.items():
            ax.plot(
                cs[li]["k"],
                cs[li]["mass"],
                label=f"{fam} (needed {res[fam]['edges_needed'][li]['k']:,})",
            )
        ax.set_xscale("log")
        ax.set_xlabel("edges kept")
        ax.set_ylabel("edge mass kept")
        ax.set_title(f"{names[li]} → {names[li + 1]}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"mod-add p={args.p}: edge-mass curves (legend: edges needed at Δacc ≤ {args.tol})",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    plots.save(fig, args.out, dpi=120)
    atomic_write_json(args.out.with_suffix(".json"), {"train": info, "args": {k: str(v) for k, v in
                      vars(args).items()}, "results": res})  # fmt: skip
    print(f"figure: {args.out}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
