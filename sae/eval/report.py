"""Assemble report.json (schema in sae/eval/__init__.py) and report.md, draw the frontier, and
write both files atomically."""

from __future__ import annotations

import dataclasses
import datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae.eval import plots
from sae.eval.base import EvalContext, EvalTarget, SuiteResult, fmt
from sae.eval.stream import finish_provenance
from sae.fsutil import atomic_write_text
from sae.io.records import Report, ReportEntry, clean_json

if TYPE_CHECKING:
    from sae.eval.config import EvalConfig

SCHEMA_VERSION = 1
_FIDELITY = {  # downstream kind -> (headline metric, label)
    "causal_lm": ("ce_recovered", "CE recovered (zero-ablation baseline)"),
    "encoder": ("pooled_cosine", "mean-pooled sentence-embedding cosine"),
}


def _sae_block(target: EvalTarget) -> dict[str, Any]:
    c = target.sae.cfg
    block = {"architecture": c.architecture, "d_in": c.d_in, "d_sae": c.d_sae, "d_out": c.d_out}
    if c.architecture in ("topk", "batchtopk", "matryoshka"):
        block["k"] = c.k
    return block


def _frontier(ctx: EvalContext, entries: list[ReportEntry]) -> dict[str, Any] | None:
    cores = [(e.name, e.results["core"]) for e in entries if "core" in e.results]
    if len(cores) < 2:
        return None
    kinds = [c["downstream"]["kind"] for _, c in cores if c["downstream"]["kind"]]
    key, label = _FIDELITY.get(kinds[0], (None, None)) if kinds else (None, None)
    points = []
    for name, c in cores:
        fvu, l0 = c["reconstruction"]["fvu"], c["reconstruction"]["l0"]
        fid = (c["downstream"].get("metrics") or {}).get(key) if key else None
        points.append(
            {
                "name": name,
                "l0": l0["value"],
                "fvu": fvu["value"],
                "fvu_ci": fvu["ci95"],
                "fidelity": fid["value"] if fid else None,
                "fidelity_ci": fid["ci95"] if fid else None,
            }
        )
    path = ctx.out / "frontier.png"
    plots.frontier(path, [p for p in points if p["l0"] is not None], label)
    return {
        "fidelity_metric": key,
        "fidelity_label": label,
        "points": points,
        "figure": "frontier.png",
    }


def _text(v: Any) -> str | None:
    """A metadata name as report.json types it (another library's cfg.json may hold anything)."""
    return v if v is None or isinstance(v, str) else str(v)


def build_report(
    cfg: EvalConfig, ctx: EvalContext, results: list[tuple[EvalTarget, dict[str, SuiteResult]]]
) -> Report:
    """The report record; non-finite numbers already null (JSON has none), as written."""
    entries = []
    for target, per_suite in results:
        meta = target.meta
        entries.append(
            ReportEntry(
                name=target.name,
                folder=str(target.folder),
                sae=_sae_block(target),
                model=_text(meta.get("model_name")),
                hook=_text(meta.get("hook_name")),
                target_hook=_text(meta.get("target_hook_name")),
                tokens_trained=clean_json(meta.get("tokens_trained")),
                activations=clean_json(finish_provenance(target)),
                results={s: clean_json(r.results) for s, r in per_suite.items()},
                figures={s: r.figures for s, r in per_suite.items()},
            )
        )
    return Report(
        schema_version=SCHEMA_VERSION,
        sae_version=version("sae"),
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        config=clean_json(dataclasses.asdict(cfg)),
        suites=list(cfg.suites),
        timings_s={k: round(v, 3) for k, v in ctx.timings.items()},
        saes=entries,
        frontier=clean_json(_frontier(ctx, entries)),
    )


def render_markdown(report: Report, results) -> str:
    cfg = report.config
    lines = [
        "# sae eval report",
        "",
        f"Created {report.created_utc} by sae {report.sae_version}; suites "
        f"{', '.join(report.suites)}; up to {cfg['eval_tokens']:,} tokens per SAE; "
        f"{cfg['n_boot']} bootstrap resamples.",
        "",
    ]
    for entry, (_, per_suite) in zip(report.saes, results, strict=True):
        s, a = entry.sae, entry.activations
        shape = f"{s['architecture']}, d_in {s['d_in']}, d_sae {s['d_sae']}"
        shape += f", k {s['k']}" if "k" in s else ""
        shape += f", d_out {s['d_out']} (transcoder)" if s["d_out"] else ""
        lines += [
            f"## {entry.name}",
            "",
            f"- folder: `{entry.folder}`",
            f"- SAE: {shape}",
        ]
        if entry.model and entry.hook:
            lines.append(
                f"- model: `{entry.model}`, hook `{entry.hook}`"
                + (f" -> `{entry.target_hook}`" if entry.target_hook else "")
            )
        if entry.tokens_trained is not None:
            n = entry.tokens_trained
            lines.append(
                f"- trained on {n:,} tokens" if isinstance(n, int) else f"- trained on {n}"
            )
        if a["kind"] == "live":
            d = a["data"]
            held = {True: "held-out", False: "NOT held-out"}.get(a["held_out"], "unverified")
            lines.append(
                f"- scored on: {a.get('windows_read', 0)} {held} windows (every "
                f"{d['eval_every']}th, {d['context_size']} tokens) of `{d['source']}`; data from "
                f"{a['data_origin']}; {a.get('held_out_basis', '')}"
            )
        else:
            lines.append(
                f"- scored on: {a['kind']} activations" + (f" `{a['path']}`" if "path" in a else "")
            )
        for suite, r in per_suite.items():
            lines += ["", f"### {suite}", "", r.markdown]
        lines.append("")
    fr = report.frontier
    if fr:
        lines += [
            "## Sparsity-fidelity frontier",
            "",
            f"| SAE | L0 | FVU | {fr['fidelity_label'] or 'fidelity'} |",
            "|---|---|---|---|",
        ]
        for p in sorted(fr["points"], key=lambda p: p["l0"] or 0):
            fvu = fmt({"value": p["fvu"], "ci95": p["fvu_ci"]})
            fid = fmt({"value": p["fidelity"], "ci95": p["fidelity_ci"]})
            l0 = "n/a" if p["l0"] is None else f"{p['l0']:.2f}"
            lines.append(f"| {p['name']} | {l0} | {fvu[0]} {fvu[1]} | {fid[0]} {fid[1]} |")
        lines += ["", f"![frontier]({fr['figure']})", ""]
    return "\n".join(lines) + "\n"


def write_report(
    cfg: EvalConfig, ctx: EvalContext, results: list[tuple[EvalTarget, dict[str, SuiteResult]]]
) -> Path:
    report = build_report(cfg, ctx, results)
    out = Path(ctx.out)
    path = report.write(out)
    atomic_write_text(out / "report.md", render_markdown(report, results))
    return path
