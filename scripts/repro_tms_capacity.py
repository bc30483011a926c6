"""Reproduce Elhage et al.'s toy model of superposition (2022) as a capacity check
(docs/methods.md#capacity).

Run (CPU, no GPU or torchrun variant: the models are tiny; timings in BENCHMARKS.md):

    python scripts/repro_tms_capacity.py
    python scripts/repro_tms_capacity.py --geometry-steps 0      # the 20 → 5 sweep alone
    python scripts/repro_tms_capacity.py --decay 1.0 --sparsities 0 0.5 0.9 0.99 --out runs/repro/tms_uniform.png

Two experiments, both x' = ReLU(WᵀW x + b) with loss Σ_i I_i (x_i − x'_i)², feature i uniform on
[0, 1] with probability p = 1 − S, else 0; every model of an experiment trains at once as a batch of
independent models (Adam, lr 1e-3 with cosine decay, batch 1024):

1. The importance sweep: 20 features into 5 hidden dimensions, importance I_i = 0.7^i, the sparsities
   of `--sparsities` (`--seeds` models each, `--steps` steps).
2. The feature-geometry experiment (`--geometry-*`): 200 features into 20 dimensions, uniform
   importance, p = 20^(−t) for t evenly spaced in [0, 1], the setting of the paper's feature
   dimensionality figure (as in ARENA's reproduction of it).

Per learned W the script prints ΣC (≤ rank), Elhage's dimensions per feature D* = m/‖W‖_F², the
number of represented features (‖W_i‖ > 0.5), how many represented features sit within 0.03 of each
"sticky" fraction 1, 3/4, 2/3, 1/2, 2/5, 3/8 (a feature alone, a tetrahedron, a triangle, an
antipodal pair, a pentagon, a square antiprism) and, for the sweep, every feature's capacity C_i
(= Elhage's dimensionality D_i, docs/methods.md#capacity) in importance order. The figure shows C_i
against 1/(1 − S), one dot per represented feature, with those fractions and, for the geometry
experiment, D* per model.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from sae.analysis.capacity import feature_capacity
from sae.eval import plots

STICKY = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375}


def train_tms(
    sparsities: list[float],
    n_features: int,
    n_hidden: int,
    decay: float,
    seeds: int,
    steps: int,
    batch: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([I] sparsity per model, [I, n_hidden, n_features] learned W) for I = len(sparsities)·seeds."""
    g = torch.Generator().manual_seed(seed)
    S_I = torch.tensor(sparsities, dtype=torch.float32).repeat_interleave(seeds)
    n_inst = len(S_I)
    std = math.sqrt(2 / (n_hidden + n_features))  # Xavier normal, as Elhage et al.'s notebook
    W = torch.nn.Parameter(torch.randn(n_inst, n_hidden, n_features, generator=g) * std)
    b = torch.nn.Parameter(torch.zeros(n_inst, n_features))
    imp_F = decay ** torch.arange(n_features, dtype=torch.float32)
    opt = torch.optim.Adam([W, b], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    p_I11 = (1 - S_I)[:, None, None]
    for _ in range(steps):
        on = torch.rand(n_inst, batch, n_features, generator=g) < p_I11
        x_IBF = torch.rand(n_inst, batch, n_features, generator=g) * on
        h_IBH = torch.einsum("ibf,ihf->ibh", x_IBF, W)
        out_IBF = torch.relu(torch.einsum("ibh,ihf->ibf", h_IBH, W) + b[:, None])
        loss = (imp_F * (x_IBF - out_IBF) ** 2).mean((1, 2)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return S_I, W.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsities", type=float, nargs="+",
                   default=[0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.997, 0.999])  # fmt: skip
    p.add_argument("--n-features", type=int, default=20)
    p.add_argument("--n-hidden", type=int, default=5)
    p.add_argument("--decay", type=float, default=0.7, help="importance I_i = decay^i")
    p.add_argument("--seeds", type=int, default=2, help="models per sparsity")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--geometry-features", type=int, default=200)
    p.add_argument("--geometry-hidden", type=int, default=20)
    p.add_argument("--geometry-models", type=int, default=20, help="p = 20^-t, t in [0, 1]")
    p.add_argument("--geometry-t", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"),
                   help="feature probability 20^-t for t evenly spaced in [LO, HI]")  # fmt: skip
    p.add_argument("--geometry-steps", type=int, default=10_000, help="0 skips the experiment")
    p.add_argument("--out", type=Path, default=Path("runs/repro/tms_capacity.png"))
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: spinning OpenMP threads only slow a shared machine
    t0 = time.perf_counter()
    S_I, W_IHF = train_tms(args.sparsities, args.n_features, args.n_hidden, args.decay,
                           args.seeds, args.steps, args.batch, args.seed)  # fmt: skip
    print(f"trained {len(S_I)} models in {time.perf_counter() - t0:.0f} s "
          f"({args.n_features} features -> {args.n_hidden} dims, importance {args.decay}^i)")  # fmt: skip
    points = table(S_I, W_IHF, args.n_hidden, per_feature=True)
    geo = None
    if args.geometry_steps > 0:
        # Elhage et al.'s feature-geometry experiment: uniform importance, many features,
        # feature probability p = 20^(−t) for t evenly spaced in [0, 1] (S from 0 to 0.95)
        probs = 20.0 ** -np.linspace(*args.geometry_t, args.geometry_models)
        t0 = time.perf_counter()
        S_G, W_GHF = train_tms((1 - probs).tolist(), args.geometry_features,
                               args.geometry_hidden, 1.0, 1, args.geometry_steps, args.batch,
                               args.seed + 1)  # fmt: skip
        print(f"\ntrained {len(S_G)} models in {time.perf_counter() - t0:.0f} s "
              f"({args.geometry_features} features -> {args.geometry_hidden} dims, uniform "
              f"importance, p = 20^-t, t in {args.geometry_t})")  # fmt: skip
        geo = (table(S_G, W_GHF, args.geometry_hidden, per_feature=False), S_G, W_GHF)
    plot(points, geo, args)


def table(
    S_I: torch.Tensor, W_IHF: torch.Tensor, n_hidden: int, per_feature: bool
) -> list[tuple[float, float]]:
    """Print one row per model (ΣC, D*, represented count, counts near each sticky fraction and,
    with per_feature, every C_i); return (S, C_i) for every represented feature."""
    print(f"{'S':>6} {'sumC':>7} {'D*':>5} {'repr':>4}  " + " ".join(f"{k:>4}" for k in STICKY)
          + ("  C_i in importance order" if per_feature else ""))  # fmt: skip
    points, totals, n_rep = [], dict.fromkeys(STICKY, 0), 0
    for s, W_HF in zip(S_I.tolist(), W_IHF, strict=True):
        cap = feature_capacity(W_HF.T.double())
        c_F, norm_F = cap.capacity_N.numpy(), cap.sq_norm_N.sqrt().numpy()
        rep = norm_F > 0.5
        near = {k: int((np.abs(c_F[rep] - v) < 0.03).sum()) for k, v in STICKY.items()}
        for k in near:
            totals[k] += near[k]
        n_rep += int(rep.sum())
        d_star = n_hidden / float((W_HF**2).sum())
        cells = "  " + " ".join(f"{v:.2f}" if r else "  . " for v, r in zip(c_F, rep, strict=True))
        print(f"{s:6.3f} {c_F.sum():7.3f} {d_star:5.2f} {int(rep.sum()):4d}  "
              + " ".join(f"{near[k]:4d}" for k in STICKY) + (cells if per_feature else ""))  # fmt: skip
        points += [(s, v) for v in c_F[rep]]
    print(f"represented features within 0.03 of each fraction, all {n_rep} represented: "
          + ", ".join(f"{k}: {v}" for k, v in totals.items()))  # fmt: skip
    return points


def plot(points: list[tuple[float, float]], geo, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(points, f"{args.n_features}→{args.n_hidden}, importance {args.decay}^i", None)]
    if geo is not None:
        g_points, S_G, W_GHF = geo
        d_star = args.geometry_hidden / (W_GHF**2).sum((1, 2)).numpy()
        panels.append((g_points, f"{args.geometry_features}→{args.geometry_hidden}, uniform "
                       "importance", (S_G.numpy(), d_star)))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (pts, title, dstar) in zip(axes[0], panels, strict=True):
        s, c = np.array(pts).T
        x = 1 / (1 - np.minimum(s, 0.9999))
        ax.semilogx(x * rng.uniform(0.97, 1.03, len(x)), c, "o", ms=3, alpha=0.4, label="C_i")
        if dstar is not None:
            ax.semilogx(1 / (1 - dstar[0]), dstar[1], "k-", lw=1.2, label="D* = m/‖W‖²")
            ax.legend(loc="lower left", fontsize=8)
        for name, v in STICKY.items():
            ax.axhline(v, color="grey", lw=0.6, ls=":")
            ax.text(1.01, v, name, va="center", fontsize=8, transform=ax.get_yaxis_transform())
        ax.set(xlabel="1 / (1 − S)  (inverse feature probability)", ylabel="capacity C_i",
               title=f"TMS {title}")  # fmt: skip
    fig.tight_layout()
    plots.save(fig, args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
