"""Reproduce Elhage et al.'s toy model of superposition (2022) as a capacity check (MATH.md §B.5, §B.6).

Run (CPU, about 1-2 minutes on 2 cores; no GPU or torchrun variant: the models are 20 × 5):

    python scripts/repro_tms_capacity.py
    python scripts/repro_tms_capacity.py --decay 1.0 --sparsities 0 0.5 0.9 0.99 --out runs/repro/tms_uniform.png

20 features into 5 hidden dimensions, x' = ReLU(WᵀW x + b), loss Σ_i I_i (x_i − x'_i)² with
importance I_i = 0.7^i; feature i is uniform on [0, 1] with probability 1 − S, else 0. All
sparsities (and `--seeds` repeats of each) train at once as a batch of independent models (Adam,
lr 1e-3 with cosine decay, batch 1024). Per learned W the script prints ΣC (≤ 5 = rank), Elhage's
dimensions per feature D* = m/‖W‖_F², the number of represented features (‖W_i‖ > 0.5), every
feature's capacity C_i (= Elhage's dimensionality D_i, MATH §B.1) in importance order, and how many
represented features sit within 0.03 of each "sticky" fraction 1, 3/4, 2/3, 1/2, 2/5, 3/8 (§B.5:
a feature alone, a tetrahedron, a triangle, an antipodal pair, a pentagon, a square antiprism).
The figure shows C_i against sparsity, one dot per represented feature, with those fractions.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from sae.analysis.capacity import feature_capacity

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
    p.add_argument("--out", type=Path, default=Path("runs/repro/tms_capacity.png"))
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: spinning OpenMP threads only slow a shared machine
    t0 = time.perf_counter()
    S_I, W_IHF = train_tms(args.sparsities, args.n_features, args.n_hidden, args.decay,
                           args.seeds, args.steps, args.batch, args.seed)  # fmt: skip
    print(f"trained {len(S_I)} models in {time.perf_counter() - t0:.0f} s "
          f"({args.n_features} features -> {args.n_hidden} dims, importance {args.decay}^i)")  # fmt: skip
    print(f"{'S':>6} {'sumC':>6} {'D*':>5} {'repr':>4}  " + " ".join(f"{k:>4}" for k in STICKY)
          + "  C_i in importance order")  # fmt: skip
    points, totals = [], dict.fromkeys(STICKY, 0)
    for s, W_HF in zip(S_I.tolist(), W_IHF, strict=True):
        cap = feature_capacity(W_HF.T.double())
        c_F, norm_F = cap.capacity_N.numpy(), cap.sq_norm_N.sqrt().numpy()
        rep = norm_F > 0.5
        near = {k: int((np.abs(c_F[rep] - v) < 0.03).sum()) for k, v in STICKY.items()}
        for k in near:
            totals[k] += near[k]
        d_star = args.n_hidden / float((W_HF**2).sum())
        print(f"{s:6.3f} {c_F.sum():6.3f} {d_star:5.2f} {int(rep.sum()):4d}  "
              + " ".join(f"{near[k]:4d}" for k in STICKY) + "  "
              + " ".join(f"{v:.2f}" if r else "  . " for v, r in zip(c_F, rep, strict=True)))  # fmt: skip
        points += [(s, v) for v in c_F[rep]]
    print("represented features near each fraction, all models: "
          + ", ".join(f"{k}: {v}" for k, v in totals.items()))  # fmt: skip
    plot(points, args)


def plot(points: list[tuple[float, float]], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, c = np.array(points).T
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = 1 / (1 - np.minimum(s, 0.9999))
    jitter = np.random.default_rng(0).uniform(0.97, 1.03, len(x))
    ax.semilogx(x * jitter, c, "o", ms=3, alpha=0.6)
    for name, v in STICKY.items():
        ax.axhline(v, color="grey", lw=0.6, ls=":")
        ax.text(x.max() * 1.3, v, name, va="center", fontsize=8)
    ax.set(xlabel="1 / (1 − S)  (inverse feature probability)", ylabel="capacity C_i",
           title=f"TMS {args.n_features}→{args.n_hidden}, importance {args.decay}^i: "
           "capacity of represented features")  # fmt: skip
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
