"""The PNG plots of a report: feature density, L0, the sparsity-fidelity frontier, MMCS per true
feature. Each function draws one figure and writes it atomically (temp file, then rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def density(path: Path, log10_density: np.ndarray, n_dead: int, n_tokens: int, title: str) -> None:
    """Histogram of log10 firing rate over live latents; dead latents counted in the legend."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    lo = -np.ceil(np.log10(max(n_tokens, 10)))
    bins = np.arange(lo, 0.0001, 0.2)
    ax.hist(log10_density, bins=bins, color="tab:blue", label=f"live ({len(log10_density)})")
    for x, label in ((-2, "1%"), (-1, "10%")):
        ax.axvline(x, color="tab:red", ls="--", lw=0.8)
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", color="tab:red", va="top", fontsize=8)
    ax.set_xlabel("log10 firing rate (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}\nfeature density over {n_tokens:,} tokens; dead: {n_dead}", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def l0(path: Path, counts: list[int], mean: float, title: str) -> None:
    """Bar chart of the number of active latents per token."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:green")
    ax.axvline(mean, color="k", ls="--", lw=0.8, label=f"mean {mean:.2f}")
    ax.set_xlabel("active latents per token (L0)")
    ax.set_ylabel("tokens")
    ax.set_title(f"{title}\nL0 distribution", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def _short_names(names: list[str]) -> dict[str, str]:
    """Drop the '-'-separated parts every name shares ('00-resid_post.3-topk-3072-k8' -> '00-k8')."""
    parts = [n.split("-") for n in names]
    if len(names) < 2 or len({len(p) for p in parts}) != 1:
        return {n: n for n in names}
    keep = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    return {n: "-".join(p[i] for i in keep) or n for n, p in zip(names, parts, strict=True)}


def frontier(path: Path, points: list[dict], fidelity_label: str | None) -> None:
    """L0 against FVU, and L0 against the downstream fidelity number, one point per SAE.

    points: dicts with name, l0, fvu, fvu_ci, fidelity, fidelity_ci (None where absent)."""
    short = _short_names([p["name"] for p in points])
    panels = 2 if fidelity_label and any(p["fidelity"] is not None for p in points) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    pts = sorted(points, key=lambda p: p["l0"])
    for ax, key, label in zip(
        axes[0], ("fvu", "fidelity"), ("FVU (lower is better)", fidelity_label), strict=False
    ):
        xs, ys, lo, hi = [], [], [], []
        for p in pts:
            if p[key] is None:
                continue
            ci = p[f"{key}_ci"] or [p[key], p[key]]
            xs.append(p["l0"])
            ys.append(p[key])
            lo.append(p[key] - ci[0])
            hi.append(ci[1] - p[key])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3)
        for p in pts:
            if p[key] is not None:
                ax.annotate(
                    short[p["name"]],
                    (p["l0"], p[key]),
                    fontsize=7,
                    alpha=0.8,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ax.set_xticks(sorted({p["l0"] for p in pts}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("sparsity-fidelity frontier (bars: bootstrap 95% intervals)", fontsize=10)
    _save(fig, path)


def mmcs(path: Path, max_cos_N: np.ndarray, probs_N: np.ndarray, null: float, title: str) -> None:
    """Best learned cosine of each true feature, features sorted by firing probability."""
    order = np.argsort(-probs_N, kind="stable")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(np.arange(len(order)), max_cos_N[order], ".", ms=3, label="max cos (signed)")
    ax.axhline(null, color="tab:gray", ls="--", lw=0.8, label=f"random-dictionary null {null:.3f}")
    for t in (0.9, 0.99):
        ax.axhline(t, color="tab:red", ls=":", lw=0.6)
    ax.set_xlabel("true feature, most frequent first")
    ax.set_ylabel("max cosine with a learned feature")
    ax.set_ylim(min(-0.05, float(max_cos_N.min()) - 0.05), 1.02)
    ax2 = ax.twinx()
    ax2.semilogy(np.arange(len(order)), probs_N[order], color="tab:orange", lw=0.8)
    ax2.set_ylabel("firing probability", color="tab:orange")
    ax.set_title(f"{title}\nMMCS per true feature", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
