"""The PNG plots of a report: feature density, L0, the sparsity-fidelity frontier, MMCS per true
feature. Each function draws one figure and writes it atomically (temp file, then rename)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sae.fsutil import atomic_save_png  # noqa: E402


def save(fig, path: Path, dpi: int = 110) -> None:
    """Write `fig` to `path` as PNG atomically (its folder made if missing) and close it."""
    try:
        atomic_save_png(fig, path, dpi)
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
    save(fig, path)


def l0(path: Path, counts: list[int], mean: float, title: str) -> None:
    """Bar chart of the number of active latents per token."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:green")
    ax.axvline(mean, color="k", ls="--", lw=0.8, label=f"mean {mean:.2f}")
    ax.set_xlabel("active latents per token (L0)")
    ax.set_ylabel("tokens")
    ax.set_title(f"{title}\nL0 distribution", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


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
    save(fig, path)


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
    save(fig, path)


# ---- redundancy, capacity, descramble suites (docs/methods.md) -------------------------------


def eigenspectra(path: Path, spectra: dict[str, dict], title: str) -> None:
    """One log-log panel per code: λ_k against rank k, the power-law fit over its window, and a
    line of slope −α_crit = −(1 + 2/d) through the fit's middle (α_crit = 1 for LMs, d → ∞).

    spectra: code label -> redundancy record (eigvals, alpha, intercept, fit_range, alpha_crit)."""
    n = len(spectra)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    for ax, (label, rec) in zip(axes[0], spectra.items(), strict=True):
        ev = np.asarray([v for v in rec.get("eigvals") or [] if v], dtype=float)
        if ev.size == 0:
            ax.set_title(f"{label}: no spectrum", fontsize=9)
            continue
        k = np.arange(1, ev.size + 1)
        ax.loglog(k, ev, lw=1, color="tab:blue", label="eigenvalues")
        alpha, b = rec.get("alpha"), rec.get("intercept")
        if alpha is not None and b is not None:
            lo, hi = rec["fit_range"]
            kk = np.arange(lo, hi + 1)
            ax.loglog(kk, np.exp(b) * kk**-alpha, "r--", lw=1.2, label=f"fit α = {alpha:.2f}")
            crit = rec.get("alpha_crit") or 1.0
            mid = np.sqrt(lo * hi)
            y_mid = np.exp(b) * mid**-alpha
            ax.loglog(kk, y_mid * (kk / mid) ** -crit, "k:", lw=1, label=f"slope −{crit:g}")
        ax.set_xlabel("rank k")
        ax.set_ylabel("λ_k")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{title}: eigenspectra; dotted: the smoothness border α = 1 + 2/d", fontsize=9, y=1.02
    )
    save(fig, path)


def fvu_by_pcs(path: Path, k: list[int], fvu: list[float | None], title: str) -> None:
    """FVU_k = E‖P_k(X − X̂)‖² / E‖P_k X_c‖² against k (docs/methods.md#spectral-fidelity)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ys = [np.nan if v is None else v for v in fvu]
    ax.semilogx(k, ys, "o-", ms=3)
    ax.set_xlabel("top-k principal components of X")
    ax.set_ylabel("FVU within them")
    ax.set_title(f"{title}\nwhere the SAE error lives in X's spectrum", fontsize=9)
    ax.grid(alpha=0.3)
    save(fig, path)


def hurst_vs_alpha(path: Path, points: list[tuple[str, float, float | None, float | None]]) -> None:
    """H of random and basis directions against α, per code, with H = min(1, d(α − 1)/2)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, alpha, h_rand, h_basis in points:
        if h_rand is not None:
            ax.plot(alpha, h_rand, "o", label=f"{label} random")
        if h_basis is not None:
            ax.plot(alpha, h_basis, "s", mfc="none", label=f"{label} basis")
    alphas = [p[1] for p in points] or [1.0]
    a = np.linspace(min(0.5, min(alphas)), max(3.5, max(alphas)), 200)
    for d, style in ((1, "k--"), (8, "k:")):
        ax.plot(a, np.clip(d * (a - 1) / 2, 0, 1), style, lw=0.8, label=f"theory, d = {d}")
    ax.axvline(1.0, color="grey", lw=0.6)
    ax.set_xlabel("α (power-law exponent)")
    ax.set_ylabel("H (Hurst exponent along paths)")
    ax.set_title("smoothness along input paths against the spectrum", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)


def capacity_histograms(path: Path, hists: dict[str, dict], title: str) -> None:
    """Histogram of per-feature capacity C_i ∈ [0, 1], one bar series per view."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = None
    for j, (label, h) in enumerate(hists.items()):
        edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], dtype=float)
        width = (edges[1] - edges[0]) / (len(hists) + 0.5)
        ax.bar(edges[:-1] + j * width, counts, width=width, align="edge", label=label)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("capacity C_i (1 = a dimension of its own)")
    ax.set_ylabel("features")
    ax.set_title(f"{title}\nper-feature capacity", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


def block_sizes(path: Path, size_counts: dict[str, dict[str, int]], title: str) -> None:
    """Number of blocks of each size (features per connected component), one series per view."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, counts in size_counts.items():
        sizes = sorted(int(s) for s in counts)
        ax.plot(sizes, [counts[str(s)] for s in sizes], "o-", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("features in the block")
    ax.set_ylabel("blocks")
    ax.set_title(f"{title}\nblock sizes (|cos| > τ components)", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


def subspace_capture(path: Path, r: list[int], phi: dict[str, list[float]], d: int, title: str):
    """φ_r: usage-weighted share of SAE decoder directions inside the top-r basis subspace."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, ys in phi.items():
        ax.plot(r, ys, lw=1.2, label=label)
    ax.plot(r, np.asarray(r) / d, "k--", lw=0.8, label="random subspace r/d")
    ax.set_xlabel("r (leading basis directions)")
    ax.set_ylabel("φ_r")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nsubspace capture of the SAE decoder", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)
