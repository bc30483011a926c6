"""Reproduce Scherlis et al.'s (2022) capacity phases on a toy model
(docs/methods.md#feature-classes): the most important features are monosemantic (C = 1), the middle
ones polysemantic (0 < C < 1), the least important ignored (C = 0), and polysemanticity rises with
the kurtosis of the inputs.

Run (CPU, about 1-2 minutes on 2 cores; no GPU or torchrun variant: the models are 20 × 5):

    python scripts/repro_scherlis_phases.py
    python scripts/repro_scherlis_phases.py --decay 0.8 --seeds 3 --out runs/repro/scherlis_0.8.png

Scherlis et al.'s quadratic model and its loss were not retrievable (only the abstract was), so this
uses the ReLU-output toy model of scripts/repro_tms_capacity.py (20 features → 5 dims, importance
0.7^i). Input kurtosis is varied through sparsity: x_i = U[0, 1] with probability p = 1 − S, else 0,
whose kurtosis E[(x − μ)⁴]/Var² = (p/5 − p²/2 + p³/2 − 3p⁴/16)/(p/3 − p²/4)² grows like 9/(5p).
Phases per feature (docs/methods.md#feature-classes, ε = 0.05): ignored if ‖W_i‖ < 0.1·max_j ‖W_j‖
[project choice
here: the suite's 0.1·median rule breaks when most features are ignored, the median norm is then
~0], monosemantic if C_i ≥ 0.95, polysemantic otherwise. The table gives, per sparsity, the input
kurtosis, the count and the mean importance rank (0 = most important) of each phase, the
polysemantic share of represented features and 1 − mean C over them. The figure shows each
feature's phase and capacity against importance rank and kurtosis.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from repro_tms_capacity import train_tms  # scripts/ is on sys.path when run as a script

from sae.analysis.capacity import feature_capacity
from sae.eval import plots


def mean_rank(mask: np.ndarray) -> str:
    """Mean importance rank (feature index) of the features in `mask`."""
    return f"{np.flatnonzero(mask).mean():.1f}" if mask.any() else "-"


def kurtosis(p: float) -> float:
    """Kurtosis (not excess) of x = B·U, B ~ Bernoulli(p), U ~ U[0, 1]: E[x^k] = p/(k + 1)."""
    m4 = p / 5 - p**2 / 2 + p**3 / 2 - 3 * p**4 / 16
    return m4 / (p / 3 - p**2 / 4) ** 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsities", type=float, nargs="+",
                   default=[0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995])  # fmt: skip
    p.add_argument("--n-features", type=int, default=20)
    p.add_argument("--n-hidden", type=int, default=5)
    p.add_argument("--decay", type=float, default=0.7, help="importance I_i = decay^i")
    p.add_argument("--seeds", type=int, default=2, help="models per sparsity")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/repro/scherlis_phases.png"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    S_I, W_IHF = train_tms(args.sparsities, args.n_features, args.n_hidden, args.decay,
                           args.seeds, args.steps, args.batch, args.seed)  # fmt: skip
    print(f"trained {len(S_I)} models in {time.perf_counter() - t0:.0f} s")
    print(f"{'S':>6} {'kurt':>7} | {'mono':>4} {'poly':>4} {'ign':>4} | {'rank mono':>9} "
          f"{'rank poly':>9} {'rank ign':>8} | {'poly share':>10} {'1-mean C':>8} {'sumC':>5}")  # fmt: skip
    phase_rows, rows = [], []
    for s, W_HF in zip(S_I.tolist(), W_IHF, strict=True):
        cap = feature_capacity(W_HF.T.double())
        c_F, norm_F = cap.capacity_N.numpy(), cap.sq_norm_N.sqrt().numpy()
        ignored = norm_F < 0.1 * norm_F.max()
        mono = ~ignored & (c_F >= 0.95)
        poly = ~ignored & ~mono
        rep = ~ignored
        share = poly.sum() / rep.sum()
        one_minus_c = 1 - c_F[rep].mean()
        rows.append((s, kurtosis(1 - s), share, one_minus_c))
        print(f"{s:6.3f} {kurtosis(1 - s):7.1f} | {mono.sum():4d} {poly.sum():4d} "
              f"{ignored.sum():4d} | {mean_rank(mono):>9} {mean_rank(poly):>9} "
              f"{mean_rank(ignored):>8} | {share:10.2f} {one_minus_c:8.2f} {c_F.sum():5.2f}")  # fmt: skip
        phase_rows.append(np.where(ignored, 0, np.where(mono, 2, 1)))
    r = np.array(rows)
    rho = np.corrcoef(np.log(r[:, 1]), r[:, 3])[0, 1]
    print(f"correlation of log kurtosis with (1 - mean C): {rho:.2f}")
    plot(np.array(phase_rows), W_IHF, r, args)


def plot(phases: np.ndarray, W_IHF: torch.Tensor, rows: np.ndarray, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    fig, (ax_p, ax_k) = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = ListedColormap(["lightgrey", "tab:orange", "tab:blue"])
    ax_p.imshow(phases, aspect="auto", cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
    caps = [feature_capacity(W.T.double()).capacity_N.numpy() for W in W_IHF]
    for i, c_F in enumerate(caps):
        for j, c in enumerate(c_F):
            if phases[i, j]:
                ax_p.text(j, i, f"{c:.2f}", ha="center", va="center", fontsize=5)
    labels = [f"S={s:.3f}, κ={k:.0f}" for s, k in rows[:, :2]]
    ax_p.set_yticks(range(len(labels)), labels, fontsize=6)
    ax_p.set(xlabel="feature (importance rank, most important first)",
             title="phase: blue monosemantic, orange polysemantic, grey ignored")  # fmt: skip
    ax_k.semilogx(rows[:, 1], rows[:, 3], "o", label="1 − mean C (represented features)")
    ax_k.semilogx(rows[:, 1], rows[:, 2], "s", mfc="none", label="polysemantic share")
    ax_k.set(xlabel="input kurtosis", ylabel="polysemanticity", title="rising with kurtosis")
    ax_k.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
