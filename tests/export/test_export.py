"""`sae export`: Neuronpedia JSON against its schema, the dashboard rendered in headless Chromium,
the SAELens re-export of a folder SAELens wrote, and the one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from export_fixtures import (  # noqa: F401
    SCRIPT,
    load_with_saedashboard,
    make_sae,
    script_model,
    script_sae,
    script_text,
)

from sae.cli import main
from sae.config.schema import DataConfig
from sae.export.cli import ExportConfig, run_export
from sae.export.neuronpedia import schema
from sae.io.records import RecordsInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where the dashboard screenshots go: $SAE_TEST_ARTIFACTS when set (to keep them), else a
    folder of the test (tests write nothing under the repository)."""
    folder = Path(os.environ.get("SAE_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def exported(tmp_path, script_sae, script_model, script_text):
    """The tiny SAE's records (made once), then a dashboard and a Neuronpedia export of them.
    The SAE records a local model folder and text file, which are read only when named
    (--model-name, --data.source)."""
    report, data = tmp_path / "report", DataConfig(source=script_text, part="eval")
    site = run_export(
        ExportConfig(
            str(script_sae),
            format="dashboard",
            out=str(tmp_path / "site"),
            report=str(report),
            batch_windows=2,
            data=data,
            model_name=script_model,
        ),
        ["source"],
    )
    np_out = run_export(
        ExportConfig(
            str(script_sae),
            format="neuronpedia",
            report=str(report),
            out=str(tmp_path / "np"),
            data=data,
            model_name=script_model,
        ),
        ["source"],
    )
    return site, np_out, report


def test_neuronpedia_batches_validate_and_keep_tokens_as_data(exported):
    """Pins: the batch shape (schema in the package), the top group marked as SAEDashboard marks
    it, every bin sample's qualifying activation inside its bin, and the `<script>` token kept as
    a string (escaped in the file, equal after parsing)."""
    import jsonschema

    _, np_out, _ = exported
    text = (np_out / "batch-0.json").read_text()
    assert "<script>" not in text and "\\u003cscript\\u003e" in text
    batch = json.loads(text)
    jsonschema.validate(batch, schema())
    assert batch["layer"] == 0 and batch["sae_set"] == "sae" and len(batch["features"]) == 48
    seen_script = False
    for f in batch["features"]:
        for a in f["activations"]:
            seen_script |= SCRIPT in [t.strip() for t in a["tokens"]]
            v = a["values"][a["qualifying_token_index"]]
            if a["bin_min"] == -1:
                assert a["bin_contains"] == -1 and v <= a["bin_max"] + 1e-4
            else:
                assert a["bin_min"] - 1e-4 <= v <= a["bin_max"] + 1e-4
                assert 0 < a["bin_contains"] <= 1
    assert seen_script
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**batch, "features": [{"feature_index": 0}]}, schema())
    meta = json.loads((np_out / "sae_export.json").read_text())
    assert meta["activations"]["held_out"] is True


def test_neuronpedia_batches_load_in_saedashboard(exported):
    """Pins issue 25.6: the batches were checked only against a schema written here. Every batch
    now loads with SAEDashboard's own NeuronpediaDashboardBatch(**batch), the class its
    Neuronpedia runner writes them from, and gives back every value (skipped, with the reason,
    where sae-dashboard is not installed)."""
    _, np_out, _ = exported
    paths = sorted(np_out.glob("batch-*.json"))
    assert paths
    for path in paths:
        load_with_saedashboard(json.loads(path.read_text()))


def test_dashboard_in_headless_chromium(exported, artifacts):
    """Pins: the index lists every latent and sorts; a latent page shows a highlighted context;
    a `<script>alert(1)</script>` token renders as text and never runs; no network request."""
    from cdp import Browser, chromium

    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    site, _, report = exported
    from safetensors.torch import load_file

    rec = load_file(str(report / "sae" / "records" / "records.safetensors"))
    info = RecordsInfo.read(report / "sae" / "records")
    script_id = next(int(k) for k, v in info.token_strings.items() if v.strip() == SCRIPT)
    latent = int((rec["top_tok"] == script_id).any(-1).any(-1).nonzero()[0])
    b = Browser(binary)
    try:
        b.open(site)
        assert b.eval("document.querySelectorAll('tr.latent').length") == 48
        assert b.eval("document.getElementById('status').dataset.matching") == "48"
        assert (
            b.eval("document.scripts.length") == 2
        )  # the data block and index.js, no injected one
        cells = b.eval("[...document.querySelectorAll('td')].map(td => td.textContent.trim())")
        assert SCRIPT in cells
        b.eval("document.querySelectorAll('th')[1].click()")  # sort by frequency, descending
        freqs = b.eval(
            "[...document.querySelectorAll('tr.latent')].map(r => +r.cells[1].textContent)"
        )
        assert freqs == sorted(freqs, reverse=True)
        b.screenshot(artifacts / "dashboard_index.png")
        b.open(site.parent / "latents" / f"{latent}.html")
        assert b.eval("document.querySelectorAll('.ctx .q').length") > 0
        assert b.eval("document.querySelectorAll('.ctx .q[class*=\"a\"]').length") > 0
        spans = b.eval("[...document.querySelectorAll('.ctx span')].map(s => s.textContent.trim())")
        assert SCRIPT in spans
        assert b.eval("document.scripts.length") == 0
        b.screenshot(artifacts / "dashboard_latent.png")
        urls = b.requests()
        assert urls and all(u.startswith("file://") for u in urls), urls
        assert not b.dialogs()
    finally:
        b.close()
    assert (artifacts / "dashboard_latent.png").stat().st_size > 1000


def test_every_format_loads_the_sae_once(
    tmp_path, script_sae, script_model, script_text, monkeypatch
):
    """Pins issue 31.3: `sae export` loaded the SAE in its checks and then again, in the SAELens
    writer or in the records pass's `sae eval`: every export read and built it twice. The real
    loader runs, counted."""
    import sae.eval.runner as runner
    import sae.io

    calls, real = [], sae.io.load

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sae.io, "load", counted)
    monkeypatch.setattr(runner, "load_sae", counted)
    data = DataConfig(source=script_text, part="eval")
    for fmt in ("saelens", "dashboard"):
        calls.clear()
        out = str(tmp_path / fmt)
        cfg = ExportConfig(str(script_sae), format=fmt, out=out, data=data, model_name=script_model)
        run_export(cfg, ["source"])
        assert len(calls) == 1, (fmt, calls)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_folder_reexports_and_reloads_identically(tmp_path, arch):
    """Pins: a folder SAELens wrote, exported with --format saelens, loads back in SAELens with
    bit-for-bit the same encode/decode, and gets a model card."""
    import sae_lens

    cls = {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}[arch]
    kw = {"k": 5} if arch == "topk" else {}
    cfg = getattr(sae_lens, f"{cls}Config")(d_in=16, d_sae=40, **kw)
    orig = getattr(sae_lens, cls)(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in orig.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 - 0.1)
    orig.save_model(tmp_path / "lens")
    main(["export", str(tmp_path / "lens"), "--format", "saelens", "--out", str(tmp_path / "out")])
    back = sae_lens.SAE.load_from_disk(tmp_path / "out")
    x = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        assert torch.equal(orig.encode(x), back.encode(x))
        assert torch.equal(orig.decode(orig.encode(x)), back.decode(back.encode(x)))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: saelens" in card and "| d_sae | 40 |" in card


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_stop_with_one_line(tmp_path, capsys, script_model, script_text):
    """Pins: a folder that is not an SAE, an unknown format, a model whose width or hook does not
    match the SAE — each one line on stderr, exit 2, nothing written."""
    out = tmp_path / "o"
    err = _one_line_error(
        capsys, ["export", str(tmp_path), "--format", "dashboard", "--out", str(out)]
    )
    assert "is not an SAE folder" in err
    sae_dir = make_sae(tmp_path / "s", script_model, script_text)
    err = _one_line_error(capsys, ["export", str(sae_dir), "--format", "pdf", "--out", str(out)])
    assert "format='pdf' is not one of" in err and "'dashboard'" in err
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "resid_post.7"
    (sae_dir / "cfg.json").write_text(json.dumps(cfg))
    named = ["--data.source", script_text, "--model-name", script_model]
    err = _one_line_error(capsys, ["export", str(sae_dir), "--out", str(out), *named])
    assert "unknown hook 'resid_post.7'" in err
    from sae.io import save
    from sae.model.sae import SAE, SAEConfig

    narrow = SAE(SAEConfig(architecture="topk", d_in=16, d_sae=8, k=2))
    save(narrow, tmp_path / "narrow", metadata={**cfg["metadata"], "hook_name": "resid_post.0"})
    err = _one_line_error(capsys, ["export", str(tmp_path / "narrow"), "--out", str(out), *named])
    assert "has width 32" in err and "d_in=16" in err
    assert not out.exists()


def test_dashboard_export_with_its_own_report_claims_out_first(
    tmp_path, script_sae, script_model, script_text, capsys
):
    """Pins: with no --report the records pass writes OUT/report; OUT is claimed as an export
    before that (sae/fsutil.py), so the dashboard is then written into a folder of ours (claimed
    after the records pass, OUT holding report/ would have been refused as not ours)."""
    out = tmp_path / "site"
    main(["export", str(script_sae), "--format", "dashboard", "--out", str(out),
          "--eval-tokens", "200", "--batch-windows", "2", "--data.source", script_text,
          "--model-name", script_model])  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "index.html")
    assert json.loads((out / ".sae-folder.json").read_text())["kind"] == "export"
    assert json.loads((out / "report" / ".sae-folder.json").read_text())["kind"] == "report"
    assert (out / "latents").is_dir() and not (out / ".sae-tmp").exists()
