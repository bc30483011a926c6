"""A static HTML site for one SAE: a sortable, filterable index of latents and a page per latent.

    sae export SAE_DIR --format dashboard --out site/ && xdg-open site/index.html

`index.html` embeds latents.parquet (every column any suite wrote) as JSON and sorts/filters it
with a few lines of inline script (sae/export/static/index.js, written for this project);
`latents/<i>.html` shows the latent's figures, activation histogram, logit effects, correlated
neurons and latents, top-activating contexts and samples from each activation bin, every token
highlighted by its activation. Everything is inline (CSS, script, SVG): no network request
(a Content-Security-Policy forbids any), one folder, opens from file://. Every token string
passes html.escape, or textContent in the index, or safe_json inside the data block.
"""

from __future__ import annotations

import html
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sae.export.neuronpedia import safe_json
from sae.export.view import Records
from sae.fsutil import atomic_folder, atomic_write_text, claim

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _static(name: str) -> str:
    return resources.files("sae.export").joinpath("static", name).read_text()


def _page(title: str, body: str, script: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>{_static('style.css')}</style></head>"
        f"<body>{body}{script}</body></html>\n"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}"
    return str(v)


def provenance_line(prov: dict, tokens: int) -> str:
    """One sentence: which text (or rows) was read and whether it was held out from training."""
    held = prov.get("held_out")
    status = {
        True: "held out from training",
        False: "NOT held out: some windows were training windows",
    }.get(held, "held-out status unknown")
    if prov.get("kind") == "live":
        d = prov.get("data") or {}
        what = f"{prov.get('windows_read', '?')} windows of {d.get('source')!s} (model {prov.get('model')}, hook {prov.get('hook')})"
    else:
        what = f"{prov.get('kind')} activations {prov.get('path', '')}".strip()
    basis = prov.get("held_out_basis")
    return f"{tokens:,} tokens: {what}; {status}" + (f" ({basis})" if basis else "") + "."


def _svg_bars(values: list[float], heights: list[float], w: int = 360, h: int = 110) -> str:
    if not heights or max(heights) <= 0:
        return '<p class="note">no nonzero values</p>'
    top, n = max(heights), len(heights)
    bw = w / n
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - 14 - (hh / top) * (h - 20):.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(hh / top) * (h - 20):.1f}" fill="#f57c00"><title>{html.escape(_fmt(v))}: {int(hh)}</title></rect>'
        for i, (v, hh) in enumerate(zip(values, heights, strict=True))
    )
    axis = (
        f'<text x="0" y="{h - 2}" font-size="10">{html.escape(_fmt(values[0]))}</text>'
        f'<text x="{w}" y="{h - 2}" font-size="10" text-anchor="end">{html.escape(_fmt(values[-1]))}</text>'
    )
    return f'<svg width="{w}" height="{h}" role="img">{bars}{axis}</svg>'


def _context(c: dict, vmax: float, escaped: np.ndarray) -> str:
    vals = np.asarray(c["values"], dtype=np.float64)
    level = np.where(vals > 0, np.minimum(9, 1 + (8 * vals / max(vmax, 1e-30)).astype(int)), 0)
    toks = escaped[c["ids"]]
    q = c["qualifying_token_index"]
    spans = [
        f'<span class="a{lv}{" q" if j == q else ""}" title="{v:.4g}">{t}</span>'
        if v
        else f'<span class="a0{" q" if j == q else ""}">{t}</span>'
        for j, (t, v, lv) in enumerate(zip(toks, vals.tolist(), level.tolist(), strict=True))
    ]
    return f'<div class="ctx"><span class="v">{c["value"]:.4g}</span>{"".join(spans)}</div>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(_fmt(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def latent_page(
    rec: Records, m: int, title: str, logit_note: str, escaped: np.ndarray | None = None
) -> str:
    if escaped is None:
        escaped = np.array([html.escape(t) for t in rec.vocab], dtype=object)
    row = rec.row(m)
    vmax = float(row.get("max_activation") or 0.0)
    nav = '<nav><a href="../index.html">index</a>'
    if m > 0:
        nav += f'<a href="{m - 1}.html">&larr; {m - 1}</a>'
    if m + 1 < rec.d_sae:
        nav += f'<a href="{m + 1}.html">{m + 1} &rarr;</a>'
    nav += "</nav>"
    stats = _table(list(row), [list(row.values())])
    hist = rec.histogram(m)
    parts = [nav, f"<h1>{html.escape(title)} — latent {m}</h1>", stats]
    side = [f"<h2>Activation histogram (nonzero)</h2>{_svg_bars(hist['values'], hist['heights'])}"]
    logits = rec.logits(m)
    if logits:
        rows = [[p[0], p[1], n[0], n[1]] for p, n in zip(logits["pos"], logits["neg"], strict=True)]
        side += [
            f'<h2>Logit effects</h2><p class="note">{html.escape(logit_note)}</p>',
            _table(["top token", "value", "bottom token", "value"], rows),
            _svg_bars(logits["hist_values"], logits["hist_heights"]),
        ]
    neu = [[i, r, c] for i, r, c in rec.correlated(m, "neuron")]
    lat = [[_Raw(f'<a href="{i}.html">{i}</a>'), r, c] for i, r, c in rec.correlated(m, "latent")]
    side += [
        "<h2>Correlated neurons</h2>",
        _table(["input coordinate", "Pearson r", "cosine"], neu),
    ]
    side += ["<h2>Correlated latents</h2>", _table(["latent", "Pearson r", "cosine"], lat)]
    top = rec.top_contexts(m)
    main = [f"<h2>Top activations ({len(top)})</h2>"]
    main += [_context(c, vmax, escaped) for c in top] or ['<p class="note">never fired</p>']
    for b in rec.bins(m):
        main.append(
            f"<h2>Bin {b['bin_min']:.4g} – {b['bin_max']:.4g} "
            f"(holds {100 * b['bin_contains']:.3g}% of tokens)</h2>"
        )
        main += [_context(c, vmax, escaped) for c in b["samples"]]
    parts.append(f'<div class="page"><div>{"".join(side)}</div><div>{"".join(main)}</div></div>')
    return _page(f"{title} latent {m}", "".join(parts))


def write_dashboard(rec: Records, out: Path, title: str, provenance: dict) -> Path:
    """index.html + latents/<i>.html under `out`; returns index.html."""
    table = rec.table
    if table is None:
        cols = ["latent", "frequency", "max_activation"]
        values = [
            [m, float(rec.t["frequency"][m]), float(rec.t["max_activation"][m])]
            for m in range(rec.d_sae)
        ]
        owners = {}
    else:
        cols = list(table.columns)
        values = [[_json_value(v) for v in r] for r in table.itertuples(index=False)]
        owners = _owners(rec)
    data = {"columns": cols, "rows": values, "owners": owners}
    logit_note = rec.info.logit_effects.get("note", "")
    escaped = np.array([html.escape(t) for t in rec.vocab], dtype=object)
    claim(out, "export")
    with atomic_folder(out / "latents", "export") as tmp:
        for m in range(rec.d_sae):
            (tmp / f"{m}.html").write_text(latent_page(rec, m, title, logit_note, escaped))
        os.sync()  # one flush for thousands of pages, before the folder swap makes them visible
    body = (
        f"<h1>{html.escape(title)}</h1>"
        f'<div class="meta">{html.escape(provenance_line(provenance, rec.info.tokens))}'
        f"<br>Click a header to sort; type in the boxes to filter (&gt;0.01, &lt;5, 0.1..0.3, or text).</div>"
        f'<p id="status"></p><table id="latents"></table><button id="more" hidden>show more</button>'
        f'<script type="application/json" id="latents-data">{safe_json(data)}</script>'
    )
    index = out / "index.html"
    atomic_write_text(index, _page(title, body, f"<script>{_static('index.js')}</script>"))
    return index


def _json_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _owners(rec: Records) -> dict[str, str]:
    from sae.eval.table import read_latents_table

    return read_latents_table(rec.folder.parent / "latents.parquet")[1]
