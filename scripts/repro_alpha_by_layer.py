"""α by layer for the built-in model (Marshall & Kirchner 2024's depth trend;
docs/methods.md#alpha-power-law-exponent), with
an SAE's reconstruction, error and latents beside its layer when an SAE folder is given.

Run (CPU, about 1-3 minutes on 2 cores at the default 30k tokens; GPU: add --device cuda):

    python scripts/repro_alpha_by_layer.py
    python scripts/repro_alpha_by_layer.py --sae checkpoints/default/final/resid_post.3-topk-3072-k32
    python scripts/repro_alpha_by_layer.py --tokens 100000 --n-boot 200 --out runs/repro/alpha_by_layer.png

all-MiniLM-L6-v2 (`builtin`) runs once over held-out built-in windows (every 5th window, 128
tokens, BOS and special tokens dropped as in training) and the residual stream after each of its
six blocks (resid_post.0-5, d = 384) streams into fp64 covariances, windows dealt to 20 groups for
the bootstrap. Per layer: Stringer's 1/k-weighted α on ranks 11..min(500, d/2, n/20) with its 95%
interval, R², drift, PR, PR/d, n90, ρ_info (σ² = λ̄), ρ_offdiag, and the LM smoothness test α > 1.
With --sae, the `redundancy` suite runs on that SAE over the same number of tokens and its x_hat,
error and latents rows are printed at the SAE's layer (the random-projection part is skipped
unless --paths > 0).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sae.activations.sources import LiveSource
from sae.analysis.spectrum import CovarianceAccumulator, redundancy_summary
from sae.config.schema import DataConfig, ModelConfig, StoreConfig
from sae.eval import plots

GROUPS = 20
COLUMNS = ("alpha", "r2_loglog", "alpha_drift", "PR", "PR_over_d", "n90", "rho_info", "rho_offdiag")


def layer_records(tokens: int, n_boot: int, device: str, layers: int = 6) -> dict[str, dict]:
    hooks = [f"resid_post.{i}" for i in range(layers)]
    src = LiveSource(
        ModelConfig(name="builtin", hooks=hooks, device=device, batch_windows=16),
        DataConfig(source="builtin", part="eval", context_size=128),
        StoreConfig(exclude_bos=True, exclude_special=True),
    )
    accs = {h: [CovarianceAccumulator() for _ in range(GROUPS)] for h in hooks}
    slot: dict[int, int] = {}
    seen = 0
    for piece in src.pieces(0):
        win = piece.meta["window"].long()
        g_N = torch.tensor([slot.setdefault(int(w), len(slot)) % GROUPS for w in win.tolist()])
        for h in hooks:
            for g in g_N.unique().tolist():
                accs[h][g].update(piece.rows[h][g_N == g])
        seen += len(win)
        if seen >= tokens:
            break
    out = {}
    for h in hooks:
        groups = [a for a in accs[h] if a.n > 0]
        full = CovarianceAccumulator.pooled(groups)
        out[h] = redundancy_summary(full, groups=groups, n_boot=n_boot)
    return out


def sae_records(
    sae_dir: str, tokens: int, n_boot: int, device: str, paths: int
) -> tuple[str, dict]:
    import sae.eval.redundancy as red
    from sae.eval import EvalConfig, run_eval
    from sae.io.records import Report

    red.PATHS = paths
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvalConfig([sae_dir], suite="redundancy", eval_tokens=tokens, n_boot=n_boot,
                         device=device, out=tmp)  # fmt: skip
        entry = Report.read(run_eval(cfg)).saes[0]
    return entry.hook, entry.results["redundancy"]["codes"]


def _fmt(rec: dict, key: str) -> str:
    v = rec.get(key)
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=30_000, help="held-out tokens per layer")
    p.add_argument("--n-boot", type=int, default=100, help="bootstrap resamples of window groups")
    p.add_argument("--sae", default=None, help="SAE folder on one of the built-in model's layers")
    p.add_argument("--paths", type=int, default=0, help="embedding paths for the SAE's H (slow)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("runs/repro/alpha_by_layer.png"))
    args = p.parse_args()
    t0 = time.perf_counter()
    recs = layer_records(args.tokens, args.n_boot, args.device)
    rows = [(h, "x", r) for h, r in recs.items()]
    sae_hook = None
    if args.sae:
        sae_hook, codes = sae_records(args.sae, args.tokens, args.n_boot, args.device, args.paths)
        at = next(i for i, row in enumerate(rows) if row[0] == sae_hook) + 1
        rows[at:at] = [(sae_hook, f"SAE {c}", codes[c]) for c in ("x_hat", "error", "latents")]
    n = next(iter(recs.values()))["n"]
    print(f"builtin (all-MiniLM-L6-v2), {n:,} held-out tokens, {time.perf_counter() - t0:.0f} s")
    print(f"{'hook':>13} {'code':>12} {'alpha':>6} {'95% CI':>15} {'window':>7} "
          + " ".join(f"{c:>11}" for c in COLUMNS[1:]) + "  alpha>1")  # fmt: skip
    for hook, code, r in rows:
        ci = r.get("alpha_ci95")
        ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] is not None else ""
        lo, hi = r["fit_range"]
        print(f"{hook:>13} {code:>12} {_fmt(r, 'alpha'):>6} {ci_s:>15} {f'{lo}-{hi}':>7} "
              + " ".join(f"{_fmt(r, c):>11}" for c in COLUMNS[1:])
              + f"  {r.get('smooth_possible')}")  # fmt: skip
    plot(rows, args.out)


def plot(rows: list, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    layer = {f"resid_post.{i}": i for i in range(6)}
    for code, marker in (("x", "o-"), ("SAE x_hat", "s"), ("SAE error", "^"), ("SAE latents", "D")):
        pts = [(layer[h], r) for h, c, r in rows if c == code and r.get("alpha") is not None]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        for ax, key in zip(axes, ("alpha", "PR_over_d", "rho_info"), strict=True):
            ys = [p[1][key] for p in pts]
            if key == "alpha":
                cis = [p[1].get("alpha_ci95") or [y, y] for p, y in zip(pts, ys, strict=True)]
                # a percentile interval may exclude the estimate (bias); draw no negative bar
                err = [[max(0.0, y - (c[0] or y)) for c, y in zip(cis, ys, strict=True)],
                       [max(0.0, (c[1] or y) - y) for c, y in zip(cis, ys, strict=True)]]  # fmt: skip
                ax.errorbar(xs, ys, yerr=err, fmt=marker, capsize=3, label=code)
            else:
                ax.plot(xs, ys, marker, label=code)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--", label="α = 1 (LM smoothness border)")
    for ax, label in zip(axes, ("α (Stringer fit)", "PR / d", "ρ_info (σ² = λ̄)"), strict=True):
        ax.set(xlabel="layer (resid_post.N)", ylabel=label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("all-MiniLM-L6-v2: redundancy of the residual stream by depth", fontsize=10)
    fig.tight_layout()
    plots.save(fig, out, dpi=120)
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
