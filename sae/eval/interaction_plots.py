"""Figures and report.md section of the `interaction` suite: the interaction graph of the
strongest nodes per basis, edge-mass curves, ablation curves, and the SAE's subspace capture.
Each figure function returns False when it has nothing to draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sae.analysis.interaction_graph import Edges
from sae.eval import plots
from sae.eval.plots import plt

LABELS = {"neuron": "neurons", "pca": "PCA", "lib": "LIB", "sae": "SAE"}
TOP_NODES = 10


def interaction_graph(path: Path, res: dict, edges: Edges, title: str) -> bool:
    """Bipartite graph per basis: the TOP_NODES strongest upstream and downstream nodes (by edge
    mass, constant nodes left out), line width ∝ edge strength within the panel. Nodes are
    labelled by direction index (1 = the first after the constant); SAE nodes by latent id
    (`edges.sae_latents`, the live latents in the order of E["sae"]'s columns) and "error"."""
    E = edges.E
    fig, axes = plt.subplots(1, len(E), figsize=(3.2 * len(E), 4.2), squeeze=False)
    for ax, (name, Ek) in zip(axes[0], E.items(), strict=True):
        M = Ek[1:, 1:].numpy()
        up = np.argsort(-M.sum(0))[:TOP_NODES]
        down = np.argsort(-M.sum(1))[:TOP_NODES]
        sub = M[np.ix_(down, up)]
        top = sub.max() if sub.size and sub.max() > 0 else 1.0
        ys_u, ys_d = np.linspace(1, 0, len(up)), np.linspace(1, 0, len(down))
        for i in range(len(down)):
            for j in range(len(up)):
                w = sub[i, j] / top
                if w > 0.02:
                    ax.plot([0, 1], [ys_u[j], ys_d[i]], color="C0", lw=4 * w, alpha=0.3 + 0.7 * w)
        ax.scatter(np.zeros(len(up)), ys_u, s=30, color="C1", zorder=3)
        ax.scatter(np.ones(len(down)), ys_d, s=30, color="C2", zorder=3)
        for j, u in enumerate(up):
            label = _node_label(name, int(u), M.shape[1], edges.sae_latents)
            ax.text(-0.05, ys_u[j], label, ha="right", va="center", fontsize=6)
        for i, o in enumerate(down):
            ax.text(1.05, ys_d[i], str(o + 1), ha="left", va="center", fontsize=6)
        ax.set_xlim(-0.3, 1.3)
        ax.axis("off")
        ax.set_title(f"{LABELS[name]} → downstream PCA", fontsize=8)
    fig.suptitle(f"{title}\nstrongest edges between the {TOP_NODES} strongest nodes", fontsize=9)
    plots.save(fig, path)
    return True


def _node_label(name: str, u: int, n_cols: int, sae_latents: list[int]) -> str:
    """Upstream node u of a panel (constant node dropped): SAE columns are [live latents...,
    error], labelled by latent id; a basis's directions by their index."""
    if name != "sae":
        return str(u + 1)
    return "error" if u == n_cols - 1 else str(sae_latents[u])


def edge_mass(path: Path, res: dict, edges: Edges, title: str) -> bool:
    """Fraction of edge mass against edges kept (strongest first), per basis."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, c in res["curves"]["mass"].items():
        if not c["k"]:
            continue
        n = c["k"][-1]
        axes[0].plot(c["k"], c["mass"], label=f"{LABELS[name]} ({n:,} edges)")
        axes[1].plot(np.asarray(c["k"]) / n, c["mass"], label=LABELS[name])
    axes[0].set_xscale("log")
    axes[0].set_xlabel("edges kept (absolute)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("edges kept (fraction)")
    for ax in axes:
        ax.set_ylabel("edge mass kept")
        ax.axhline(0.9, color="k", lw=0.5, ls=":")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}\nedge-mass curves", fontsize=9)
    plots.save(fig, path)
    return True


def ablation(path: Path, res: dict, edges: Edges, title: str) -> bool:
    """Downstream loss against directions kept (by Λ) and against edges kept (edge ablation)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    floor = 1e-6  # the loss is ~0 with everything kept (or below 0 by chance): drawn at the floor
    for name, c in res["curves"]["directions"].items():
        axes[0].plot(c["r"], np.maximum(c["loss"], floor), marker=".", label=LABELS[name])
    for name, b in res["bases"].items():
        ks = sorted((int(k), max(v, floor)) for k, v in b["edges_needed"]["losses"].items())
        if ks:
            axes[1].plot(*zip(*ks, strict=True), marker="o", ls="", label=LABELS[name])
    axes[1].axhline(res["bases"]["lib"]["edges_needed"]["tol"], color="k", lw=0.6, ls="--")
    for ax, xl in zip(axes, ("directions kept", "edges kept (bisection points)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(res["loss"]["name"], fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}\nablation curves", fontsize=9)
    plots.save(fig, path)
    return True


def capture(path: Path, res: dict, edges: Edges, title: str) -> bool:
    if "sae" not in res:
        return False
    phi = res["sae"]["phi"]
    d = res["degeneracy"]["width"]
    plots.subspace_capture(path, phi["r"], {"LIB": phi["lib"], "PCA": phi["pca"]}, d, title)
    return True


FIGURES = {
    "interaction_graph": interaction_graph,
    "edge_mass": edge_mass,
    "ablation_curves": ablation,
    "subspace_capture": capture,
}


def _g(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _trivial(r: dict) -> str:
    """The trivial-partition remark, only for the bases where Leiden found one cluster."""
    one = [LABELS[k] for k, b in r["bases"].items() if b["leiden"]["n_clusters"] == 1]
    if not one:
        return ""
    return (
        f" {', '.join(one)}: one cluster, the trivial partition (Q = 1 − γ): no modular "
        "structure at that resolution."
    )


def markdown(r: dict, figs: dict[str, str]) -> str:
    deg, mp = r["degeneracy"], r["mprime"]
    fire = deg.get("firing")
    lines = [
        f"Layer pair: the hook's stream → the output of the block that reads it ({r['reads']}); "
        f"{r['tokens']:,} input rows, edges on {r['edge_rows']:,} (window, output position) pairs; "
        f"downstream basis: {r['downstream']['kind']} ({r['downstream']['directions']} directions "
        f"+ constant); M′ {mp['mode']}"
        + (f" ({mp['sources']} sources)." if mp["sources"] else "."),
        "",
        f"Degeneracy (d = {deg['width']}): activations d − rank G = {deg['activation_degeneracy']}, "
        f"gradients d − rank M′ = {deg['gradient_degeneracy']}"
        + (
            f", MLP units firing alike: {fire['redundancy_exact']} exact / "
            f"{fire['redundancy_near']} near duplicates of {fire['units']} ({fire['never_fire']} "
            "never fire)."
            if fire
            else "."
        ),
        "",
        f"Edges needed: fewest edges kept (the rest ablated) for the {r['loss']['name']} to stay "
        f"≤ {_g(r['bases']['lib']['edges_needed']['tol'])} on the first "
        f"{r['loss']['ablation_tokens']:,} input rows"
        + (f" (clean CE {r['loss']['clean']:.3f} nats)." if r["loss"]["clean"] is not None else ".")
        + f" Leiden at γ = {_g(r['bases']['lib']['leiden']['gamma'])} on log-normalised weights."
        + _trivial(r),
        "",
        "| basis | nodes | edges | Gini | Hoyer | N_eff/N | k_0.9 | k_0.9/N | k_0.99 | edges needed "
        "| Leiden Q | clusters | clusters at γ = 0.5 / 1 / 2 | completeness err |",
        "|---|" + "---|" * 13,
    ]
    rows = dict(r["bases"]) | ({"sae": r["sae"]} if "sae" in r else {})
    for name, b in rows.items():
        s, en, ld = b["sparsity"], b.get("edges_needed"), b.get("leiden")
        cells = [
            _g(b["directions"]), _g(s.get("edges")), _g(s.get("gini")), _g(s.get("hoyer")),
            _g(s.get("n_eff_fraction")), _g(s.get("k_90")), _g(s.get("k_90_fraction")),
            _g(s.get("k_99")), f"{en['k']:,} ({en['fraction']:.3g})" if en else "—",
            _g(ld["modularity_q"]) if ld else "—", _g(ld["n_clusters"]) if ld else "—",
            " / ".join(_g(b["leiden_sweep"][str(g)]["n_clusters"]) for g in (0.5, 1.0, 2.0))
            if "leiden_sweep" in b else "—",
            _g(b["completeness_error"]),
        ]  # fmt: skip
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    if "sae" in r:
        s = r["sae"]
        al = s["alignment"]
        phi = s["phi"]
        picks = [i for i, k in enumerate(phi["r"]) if k in (1, 8, 32) or i == len(phi["r"]) - 1]
        lines += [
            "",
            f"SAE error node: {_g(s['error_share'])} of the edge mass (bias node "
            f"{_g(s['bias_share'])}). Decoder alignment (usage-weighted MMCS, random null): "
            + ", ".join(
                f"{LABELS[k]} {v['weighted_mmcs']:.3f} ({v['null']:.3f})" for k, v in al.items()
            )
            + ". Subspace capture φ_r (LIB / PCA / r/d): "
            + ", ".join(
                f"r={phi['r'][i]}: {phi['lib'][i]:.3f} / {phi['pca'][i]:.3f} / "
                f"{phi['baseline'][i]:.3f}"
                for i in picks
            )
            + ".",
        ]
    lines += ["", *(f"![{k}]({p})" for k, p in figs.items())]
    return "\n".join(lines)
