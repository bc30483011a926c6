"""The `redundancy` suite: is the layer's code redundant, and does the dictionary keep or remove that
redundancy (Marshall & Kirchner 2024; Stringer et al. 2019; docs/methods.md#redundancy-suite)?

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --suite redundancy --out reports/red
    sae eval SAE_DIR --suite redundancy --activations caches/l3 --n-boot 100 --out reports/red

Four codes over the same scored rows, side by side (docs/methods.md#codes-compared):
  x        the activations the SAE reconstructs (its input; the target for a transcoder), d dims
  x_hat    the SAE's reconstruction
  error    x − x_hat
  latents  contribution-scaled live latents ã_k = a_k·‖d_k‖ (dead latents dropped)

Each code's record is `sae.analysis.spectrum.redundancy_summary` (x, x_hat and error: streaming
fp64 covariance): eigvals (top 1000), alpha, intercept, fit_range, r2_loglog, alpha_drift,
broken_power_law, alpha_ci95, alpha_boot_bias, alpha_crit, smooth_possible (α > 1 + 2/d with d = ∞, the LM test
α > 1), PR, PR_over_d, eff_rank, n90, rho_PR, rho_info (σ² = λ̄), rho_info_0.1 (σ² = 0.1 λ̄),
rho_offdiag, H_random, H_basis. The latents are kept as sparse rows; their covariance is formed
from AᵀA when at most `DENSE_LATENTS` latents are live, otherwise only the top eigenvalues are
found by randomized subspace iteration (`redundancy_summary_top`: eff_rank and rho_info null).

alpha_ci95: basic (reverse-percentile) bootstrap over windows (sequences; blocks of rows for matrix
files); alpha_boot_bias: mean replicate α minus α̂. Rows are dealt to
`BOOT_GROUPS` groups by window id, each group with its own accumulator (whole windows stay in one
group), and groups are resampled `min(n_boot, BOOT_MAX)` times. Codes whose group accumulators
would pass `BOOT_BYTES` in all get no interval, and the report says so.

fidelity: α(x_hat) − α(x) in x's window, PR(x_hat)/PR(x), FVU_k over the top-k PCs of x.

smoothness (live models only; docs/methods.md#random-projection-hurst-test): `PATHS` paths between
the input embeddings of two held-out windows cut to `PATH_TOKENS` tokens, `PATH_POINTS` points each,
run to the SAE's hook; `PATH_POSITIONS` token positions per path are separate curves. Per code,
smoothness_record: H and increment kurtosis for `N_RANDOM` random directions against the basis
(neurons for x/x_hat/error, latents for latents), plus x along the SAE decoder directions of the
`DECODER_DIRECTIONS` most-used latents ("decoder").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from sae.activations.capture import resolve_device
from sae.analysis.moments import csr_row_chunks, sparse_moments
from sae.analysis.smoothness import smoothness_record
from sae.analysis.spectrum import (
    CovarianceAccumulator,
    default_fit_window,
    jsonable,
    randomized_eigenspectrum,
    redundancy_summary,
    redundancy_summary_top,
    spectral_fidelity_from_stats,
)
from sae.eval import plots
from sae.eval.base import EvalContext, EvalTarget, SuiteResult
from sae.eval.layer import LatentUsage, embedding_paths, usage_key
from sae.eval.stream import rows

BOOT_GROUPS = 20
"""bootstrap units: windows are dealt to this many groups
(docs/methods.md#alpha-interval-and-bias)."""
BOOT_MAX = 200
"""most bootstrap replicates of α per code; each is one eigh."""
BOOT_BYTES = 3 << 30
"""memory for the per-group fp64 accumulators of all codes together: at d = 4,096 one code's
20 groups take 2.5 GiB, so x (first in line) keeps its interval and x_hat, error go without."""
BOOT_LATENTS = 1024
"""latent bootstrap only up to this many live latents (one eigh of that size per replicate)."""
DENSE_LATENTS = 4096
"""above this many live latents, only the top eigenvalues (randomized;
docs/methods.md#codes-compared)."""
PATHS, PATH_POINTS, PATH_TOKENS, PATH_POSITIONS = 4, 512, 32, 4
N_RANDOM = 100
DECODER_DIRECTIONS = 1024
PATH_LATENTS = 4096
"""latent code along paths: at most this many live latents, the most used (memory T·m per curve)."""
CODES = ("x", "x_hat", "error", "latents")


def check(target: EvalTarget) -> None:
    """Nothing beyond the runner's checks: any stream kind, autoencoders and transcoders."""


class _Stream:
    """Grouped covariance accumulators of x, x_hat, error; sparse latent rows; latent usage."""

    def __init__(self, d: int, m: int, groups: dict[str, int]):
        self.accs = {c: [CovarianceAccumulator() for _ in range(g)] for c, g in groups.items()}
        self.vals: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.group_rows: list[np.ndarray] = []
        self.sum_sq_M = torch.zeros(m, dtype=torch.float64)
        self.fired_M = torch.zeros(m, dtype=torch.float64)
        self.windows: dict[int, int] = {}
        """window id -> first-seen ordinal."""
        self.n = 0

    def group_of(self, window_N: torch.Tensor) -> torch.Tensor:
        """Group of each row: windows in first-seen order dealt round-robin (window ids need not
        be consecutive: held-out windows are every 5th)."""
        uniq, inv = torch.unique(window_N, return_inverse=True)
        slot = [self.windows.setdefault(int(w), len(self.windows)) for w in uniq.tolist()]
        return (torch.tensor(slot, dtype=torch.long) % BOOT_GROUPS)[inv]

    def add(self, codes: dict[str, torch.Tensor], a_NM: torch.Tensor, norm_M, window_N) -> None:
        group_N = self.group_of(window_N)
        for code, v_ND in codes.items():
            accs = self.accs[code]
            g_N = (group_N % len(accs)).to(v_ND.device)
            for g in g_N.unique().tolist():
                accs[g].update(v_ND[g_N == g] if len(accs) > 1 else v_ND)
        on_NM = a_NM != 0
        row_Z, col_Z = on_NM.nonzero(as_tuple=True)  # row-major: the CSR order
        val_Z = a_NM[row_Z, col_Z].double()
        self.sum_sq_M.index_add_(0, col_Z.cpu(), val_Z.pow(2).cpu())
        self.fired_M.index_add_(0, col_Z.cpu(), torch.ones_like(val_Z).cpu())
        self.counts.append(on_NM.sum(1).cpu().numpy())
        self.cols.append(col_Z.to(torch.int32).cpu().numpy())
        self.vals.append((val_Z * norm_M[col_Z]).float().cpu().numpy())
        self.group_rows.append(group_N.to(torch.int16).numpy())
        self.n += len(a_NM)

    def latents(self, live_M: np.ndarray) -> sp.csr_matrix:
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(self.counts))])
        a = sp.csr_matrix(  # float64: scipy multiplies in the storage dtype
            (np.concatenate(self.vals).astype(np.float64), np.concatenate(self.cols), indptr),
            shape=(self.n, len(live_M)),
        )
        return a[:, np.flatnonzero(live_M)]


def _groups(d: int, n_boot: int) -> tuple[dict[str, int], dict[str, str | None]]:
    """Bootstrap groups per dense code within BOOT_BYTES, in order x, x_hat, error."""
    groups: dict[str, int] = {}
    why: dict[str, str | None] = {}
    left = BOOT_BYTES
    for code in ("x", "x_hat", "error"):
        need = BOOT_GROUPS * 8 * d * d
        if n_boot > 0 and need <= left:
            groups[code], why[code], left = BOOT_GROUPS, None, left - need
        else:
            groups[code] = 1
            why[code] = (
                "n_boot = 0"
                if n_boot == 0
                else f"{BOOT_GROUPS} group covariances at d = {d} need {need / 2**30:.2f} GiB, "
                f"over the {BOOT_BYTES / 2**30:.1f} GiB budget"
            )
    return groups, why


def _dense_record(
    accs: list[CovarianceAccumulator], n_boot: int, seed: int
) -> tuple[dict[str, Any], CovarianceAccumulator]:
    """(record, all groups pooled); the interval needs at least 5 non-empty groups."""
    live = [a for a in accs if a.n > 0]
    full = CovarianceAccumulator.pooled(live)
    boot = len(live) >= 5 and n_boot > 0
    rec = redundancy_summary(full, groups=live if boot else None, n_boot=n_boot, seed=seed)
    return rec, full


def _latent_record(
    a_NL: sp.csr_matrix, group_N: np.ndarray, n_boot: int, seed: int
) -> tuple[dict[str, Any], str, str | None]:
    """(record, method, why no interval) of the live-latent code."""
    n, m = a_NL.shape
    if m < 2 or n < 2:
        return {"skipped": f"{m} live latent(s) on {n} rows"}, "none", "no spectrum"
    if m > DENSE_LATENTS:
        mom = sparse_moments(a_NL)
        k_hi = default_fit_window(m, n)[1]
        k = min(m, k_hi + 50)
        top = randomized_eigenspectrum(
            csr_row_chunks(a_NL), k, oversample=max(15, k // 2), n_power_iter=4, seed=seed
        )
        rec = redundancy_summary_top(top, n, m, mom.trace, mom.fro2, float((mom.var_M**2).sum()))
        why = f"{m} live latents: only the top {k} eigenvalues are computed (randomized)"
        return rec, f"top-{k} randomized subspace iteration", why
    mean_L = np.asarray(a_NL.mean(0)).ravel()
    gram = (a_NL.T @ a_NL).toarray()
    # G − nμμᵀ: latents fire sparsely, so μ² ≪ E[a²] and the subtraction keeps its digits
    cov = (gram - n * np.outer(mean_L, mean_L)) / (n - 1)
    groups = None
    why = None if n_boot > 0 else "n_boot = 0"
    if n_boot > 0 and m <= BOOT_LATENTS:
        groups = []
        for g in np.unique(group_N):
            acc, rows_g = CovarianceAccumulator(), np.flatnonzero(group_N == g)
            for s in range(0, len(rows_g), 4096):
                acc.update(torch.from_numpy(a_NL[rows_g[s : s + 4096]].toarray()))
            groups.append(acc)
        groups = groups if len(groups) >= 5 else None
    elif n_boot > 0:
        why = f"{m} live latents > {BOOT_LATENTS}: one eigh per replicate is too slow"
    rec = redundancy_summary(cov, n_samples=n, d_amb=m, groups=groups, n_boot=n_boot, seed=seed)
    return rec, "dense covariance from sparse AᵀA", why if groups is None else None


def _smoothness(target, sae, device, live_M, norm_M, usage_M, seed) -> dict[str, Any]:
    paths = embedding_paths(target, PATHS, PATH_POINTS, PATH_TOKENS, PATH_POSITIONS)
    if isinstance(paths, str):
        return {"skipped": paths}
    hook_in, hook_out = target.source_hooks
    x_CTD = paths.acts[hook_in]
    with torch.no_grad():
        out = sae(x_CTD.to(device))
    y_CTD = paths.acts[hook_out] if hook_out else x_CTD
    y_CTD, x_hat = y_CTD.double(), out.x_hat.double().cpu()
    live_idx = torch.nonzero(live_M).flatten()
    top = live_idx[torch.argsort(usage_M[live_idx], descending=True)]
    lat_idx = top[:PATH_LATENTS].sort().values
    codes = {
        "x": y_CTD,
        "x_hat": x_hat,
        "error": y_CTD - x_hat,
        "latents": (out.latents.cpu()[..., lat_idx] * norm_M[lat_idx]).double(),
    }
    recs = {c: smoothness_record(F, N_RANDOM, seed) for c, F in codes.items() if F.shape[-1] > 1}
    dec = sae.W_dec.detach().cpu()[top[:DECODER_DIRECTIONS]].double()
    return jsonable({
        "skipped": None, "n_paths": paths.n_paths, "points": PATH_POINTS,
        "tokens": paths.tokens, "positions": paths.positions, "n_random": N_RANDOM,
        "latent_dims": len(lat_idx), "codes": recs,
        "decoder": smoothness_record(y_CTD, N_RANDOM, seed, basis_RD=dec) if len(dec) else None,
    })  # fmt: skip


def run(target: EvalTarget, ctx: EvalContext) -> SuiteResult:
    device = resolve_device(ctx.device)
    sae = target.sae.to(device).eval()
    d, m = sae.cfg.width_out, sae.cfg.d_sae
    norm_M = sae.W_dec.detach().norm(dim=1)
    n_boot = min(ctx.n_boot, BOOT_MAX)
    groups, boot_why = _groups(d, n_boot)
    stream = _Stream(d, m, groups)
    with torch.no_grad():
        for b in rows(target, ctx.eval_tokens):
            out = sae(b.x_ND.to(device))
            y, y_hat = b.y_ND.to(device).double(), out.x_hat.double()
            stream.add(
                {"x": y, "x_hat": y_hat, "error": y - y_hat}, out.latents, norm_M, b.window_N
            )
    usage = LatentUsage(stream.sum_sq_M / max(stream.n, 1), stream.fired_M, stream.n)
    ctx.memo.setdefault(usage_key(target, ctx), usage)
    records, full = {}, {}
    for c in ("x", "x_hat", "error"):
        records[c], full[c] = _dense_record(stream.accs[c], n_boot, ctx.seed)
    live_M = (stream.fired_M > 0).numpy()
    group_N = np.concatenate(stream.group_rows) if stream.group_rows else np.zeros(0, np.int16)
    lat, method, boot_why["latents"] = _latent_record(
        stream.latents(live_M), group_N, n_boot, ctx.seed
    )
    records["latents"] = lat
    fid = spectral_fidelity_from_stats(full["x"], full["x_hat"], full["error"])
    smooth = _smoothness(
        target, sae, device, torch.from_numpy(live_M), norm_M.cpu(), usage.mean_sq_M, ctx.seed
    )
    for code, rec in (smooth.get("codes") or {}).items():
        records[code]["H_random"], records[code]["H_basis"] = rec["H_random"], rec["H_basis"]
    results = {
        "tokens": stream.n,
        "windows": len(stream.windows),
        "bootstrap": {
            "unit": "window (sequence) groups",
            "groups": BOOT_GROUPS,
            "resamples": n_boot,
            "no_interval": boot_why,
        },
        "latents": {"d_sae": m, "live": int(live_M.sum()), "method": method},
        "codes": records,
        "fidelity": jsonable(fid),
        "smoothness": smooth,
    }
    figs = {
        "eigenspectra": ctx.figure_path(target, "eigenspectra"),
        "fvu_by_pcs": ctx.figure_path(target, "fvu_by_pcs"),
    }
    plots.eigenspectra(figs["eigenspectra"], {c: records[c] for c in CODES}, target.name)
    plots.fvu_by_pcs(
        figs["fvu_by_pcs"], results["fidelity"]["k"], results["fidelity"]["fvu_k"], target.name
    )
    if smooth.get("codes"):
        figs["hurst_vs_alpha"] = ctx.figure_path(target, "hurst_vs_alpha")
        pts = [
            (c, records[c]["alpha"], r["H_random"], r["H_basis"])
            for c, r in smooth["codes"].items()
            if records[c].get("alpha") is not None
        ]
        plots.hurst_vs_alpha(figs["hurst_vs_alpha"], pts)
    rel = {k: str(p.relative_to(ctx.out)) for k, p in figs.items()}
    return SuiteResult(results, rel, _markdown(results, rel))


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _markdown(r: dict, figs: dict[str, str]) -> str:
    lines = [
        f"{r['tokens']:,} tokens in {r['windows']:,} windows; latents: {r['latents']['live']} live "
        f"of {r['latents']['d_sae']} ({r['latents']['method']}). α: Stringer's 1/k-weighted fit; "
        f"intervals: basic bootstrap, {r['bootstrap']['resamples']} resamples of "
        f"{r['bootstrap']['groups']} window groups.",
        "",
        "| code | α | 95% interval | window | R² | drift | PR | PR/dim | eff. rank | n90 | ρ_PR "
        "| ρ_info | ρ_info(0.1) | ρ_offdiag | H random | H basis | α > 1 + 2/d |",
        "|---|" + "---|" * 16,
    ]
    for code, c in r["codes"].items():
        if "skipped" in c:
            lines.append(f"| {code} | skipped: {c['skipped']} |" + " |" * 15)
            continue
        ci = c.get("alpha_ci95")
        ci_s = f"[{_f(ci[0])}, {_f(ci[1])}]" if ci and ci[0] is not None else ""
        cells = [
            _f(c["alpha"]), ci_s, f"{c['fit_range'][0]}-{c['fit_range'][1]}", _f(c["r2_loglog"]),
            _f(c["alpha_drift"]), _f(c["PR"]), _f(c["PR_over_d"]), _f(c["eff_rank"]),
            _f(c["n90"]), _f(c["rho_PR"]), _f(c["rho_info"]), _f(c["rho_info_0.1"]),
            _f(c["rho_offdiag"]), _f(c["H_random"]), _f(c["H_basis"]), _f(c["smooth_possible"]),
        ]  # fmt: skip
        lines.append(f"| {code} | " + " | ".join(cells) + " |")
    fid = r["fidelity"]
    lines += [
        "",
        f"Spectral fidelity: α(x_hat) − α(x) = {_f(fid['delta_alpha'])}, "
        f"PR(x_hat)/PR(x) = {_f(fid['pr_ratio'])}.",
    ]
    no_ci = {c: why for c, why in r["bootstrap"]["no_interval"].items() if why}
    if no_ci:
        lines += ["", "No α interval: " + "; ".join(f"{c}: {w}" for c, w in no_ci.items()) + "."]
    s = r["smoothness"]
    if s.get("skipped"):
        lines += ["", f"Random-projection test skipped: {s['skipped']}."]
    else:
        lines += [
            "",
            f"Random-projection test: {s['n_paths']} embedding-interpolation paths × "
            f"{s['positions']} positions, {s['points']} points, {s['n_random']} random directions.",
            "",
            "| code | H random | H basis | H random (median) | H basis (median) | kurtosis random "
            "| kurtosis basis | verdict random | verdict basis |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows_ = dict(s["codes"]) | ({"x along decoder": s["decoder"]} if s["decoder"] else {})
        for code, h in rows_.items():
            cells = [
                _f(h["H_random"]), _f(h["H_basis"]), _f(h["H_random_median"]),
                _f(h["H_basis_median"]), _f(h["kurtosis_random"]), _f(h["kurtosis_basis"]),
                h["verdict_random"], h["verdict_basis"],
            ]  # fmt: skip
            lines.append(f"| {code} | " + " | ".join(cells) + " |")
    lines += ["", *(f"![{k}]({p})" for k, p in figs.items())]
    return "\n".join(lines)
