"""The records pass against a brute-force computation over every held-out token of a tiny model,
its resume, and the held-out provenance computed from the windows actually read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_fixtures import script_model, script_sae, script_text  # noqa: F401 (fixtures)
from safetensors.torch import load_file

from sae.eval import cli_main
from sae.io.records import RecordsInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _brute(sae_dir, model_path, text):
    """Latents of every held-out token, dense: [windows, T, d_sae], the kept mask and tokens."""
    from sae.activations.capture import ActivationCapture, load_model
    from sae.activations.sources import LiveSource
    from sae.config.schema import DataConfig, ModelConfig, StoreConfig
    from sae.io import load

    s = load(sae_dir)
    mcfg = ModelConfig(name=model_path, hooks=["resid_post.0"])
    data = DataConfig(source=text, context_size=16, eval_every=5, part="eval")
    src = LiveSource(mcfg, data, StoreConfig(), *(0, 1), *load_model(mcfg))
    wins = list(src.windows.iter_from(0))
    idx = torch.tensor([i for i, _ in wins])
    ids = torch.stack([w for _, w in wins])
    keep = src.keep_mask(ids)
    x = ActivationCapture(src.capture.model, ["resid_post.0"])(ids)["resid_post.0"]
    with torch.no_grad():
        a = s.encode(x.float()) * keep[..., None]
    return idx, ids, keep, a, x


def _records(tmp_path, sae_dir, name="rep", extra=()):
    """The records suite on the SAE's own recorded model and text, local and so named by flag."""
    meta = json.loads((Path(sae_dir) / "cfg.json").read_text())["metadata"]
    cli_main(
        [
            str(sae_dir),
            "--data.source",
            meta["data"]["source"],
            "--model-name",
            meta["model_name"],
            "--suite",
            "records",
            "--out",
            str(tmp_path / name),
            "--batch-windows",
            "2",
            "--eval-tokens",
            "100000",
            *extra,
        ]
    )
    folder = tmp_path / name / "sae" / "records"
    return load_file(str(folder / "records.safetensors")), RecordsInfo.read(folder)


def test_top_contexts_bins_and_frequency_equal_brute_force(
    tmp_path, script_sae, script_model, script_text
):
    """Pins: the streaming top-k merge (values, positions, context tokens and activations), the
    firing counts, exact bin counts and every quantile sample inside its bin, against a dense
    computation over all held-out tokens; the correlations against dense Pearson r."""
    rec, info = _records(tmp_path, script_sae)
    idx, ids, keep, a_BTM, x_BTD = _brute(script_sae, script_model, script_text)
    B, T, M = a_BTM.shape
    flat = a_BTM.reshape(-1, M)
    assert info.tokens == int(keep.sum())
    assert torch.equal(rec["fired"], (flat != 0).sum(0))
    K, before, after = 20, 10, 5
    pos_id = (idx[:, None] * T + torch.arange(T)).reshape(-1)
    checked = 0
    for m in range(M):
        vals, rows = flat[:, m].sort(descending=True)
        n_fire = int((vals > 0).sum())
        k = min(K, n_fire)
        torch.testing.assert_close(rec["top_val"][m, :k], vals[:k], rtol=1e-5, atol=1e-6)
        assert (rec["top_id"][m, k:] == -1).all()
        distinct = k == n_fire or vals[k - 1] > vals[k] + 1e-5
        if not distinct or k == 0:
            continue
        assert set(rec["top_id"][m, :k].tolist()) == set(pos_id[rows[:k]].tolist())
        for j in range(k):
            b, p = divmod(int(rows[j]), T)
            r = rec["top_id"][m].tolist().index(int(pos_id[rows[j]]))
            for o in range(-before, after + 1):
                q = p + o
                tok = int(ids[b, q]) if 0 <= q < T else -1
                act = float(a_BTM[b, q, m]) if 0 <= q < T else 0.0
                assert int(rec["top_tok"][m, r, o + before]) == tok
                assert float(rec["top_acts"][m, r, o + before]) == pytest.approx(act, abs=1e-5)
        checked += 1
    assert checked > M // 2
    edges, counts = rec["bin_edges"], rec["bin_counts"]
    assert torch.equal(counts.sum(1), rec["fired"])
    n_samples = 0
    for m in range(M):
        v = flat[:, m]
        for j in range(edges.shape[1] - 1):
            lo, hi = float(edges[m, j]), float(edges[m, j + 1])
            last = j == edges.shape[1] - 2
            inside = (v > 0) & (v >= lo) & ((v <= hi) if last else (v < hi))
            assert int(counts[m, j]) == int(inside.sum()), (m, j)
            sel = rec["res_bin"][m] == j
            for val in rec["res_val"][m][sel].tolist():
                assert lo <= val and (val <= hi if last else val < hi)
                n_samples += 1
            assert int(sel.sum()) <= 5
    assert n_samples > M
    # Pearson r of latent 0 with every input coordinate and every latent, dense.
    keepf = keep.reshape(-1)
    A, X = flat[keepf].double(), x_BTD.reshape(-1, x_BTD.shape[-1])[keepf].double()
    m = int(rec["fired"].argmax())
    r_x = torch.corrcoef(torch.cat([A[:, m : m + 1], X], 1).T)[0, 1:]
    torch.testing.assert_close(rec["corr_neuron_r"][m].double(), r_x[rec["corr_neuron_idx"][m]])
    assert float(rec["corr_neuron_r"][m].abs().min()) >= float(r_x.abs().sort().values[-10]) - 1e-9
    r_a = torch.corrcoef(A.T)[m].nan_to_num(0)
    torch.testing.assert_close(rec["corr_latent_r"][m].double(), r_a[rec["corr_latent_idx"][m]])
    assert m not in rec["corr_latent_idx"][m].tolist()
    assert info.logit_effects["kind"] == "unembedding"


def test_resume_after_interruption_gives_the_same_records(tmp_path, script_sae, monkeypatch):
    """Pins: an interrupted pass resumed from its saved state ends with the records of an
    uninterrupted pass (the reservoir keys are seeded by batch index, the state is complete)."""
    import sae.eval.records as records
    from sae.eval.accumulate import Accumulator

    full, _ = _records(tmp_path, script_sae, "full")
    monkeypatch.setattr(records, "SAVE_EVERY", 2)
    real = Accumulator.update

    def boom(self, *args):
        if args[-1] == 5:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Accumulator, "update", boom)
    with pytest.raises(KeyboardInterrupt):
        _records(tmp_path, script_sae, "cut")
    state = json.loads((tmp_path / "cut" / "sae" / "records" / "state.json").read_text())
    assert state["batches_done"] == 4
    monkeypatch.setattr(Accumulator, "update", real)
    resumed, _ = _records(tmp_path, script_sae, "cut")
    assert not (tmp_path / "cut" / "sae" / "records" / "state.json").exists()
    assert set(full) == set(resumed)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_held_out_is_computed_from_the_windows_read(tmp_path, script_sae):
    """Pins the old bug: `held_out` came from data.part and stayed true when --data.eval-every 3
    made the eval read windows that training (eval_every 5) had consumed."""
    _, info = _records(tmp_path, script_sae, "held")
    assert info.activations["held_out"] is True
    assert info.activations["windows_in_training"] == 0
    _, info = _records(tmp_path, script_sae, "leak", ["--data.eval-every", "3"])
    act = info.activations
    assert act["held_out"] is False and act["windows_in_training"] > 0
    report = json.loads((tmp_path / "leak" / "report.json").read_text())
    assert report["saes"][0]["activations"]["held_out"] is False
    assert "NOT held-out" in (tmp_path / "leak" / "report.md").read_text()


def test_records_from_an_activation_matrix(tmp_path):
    """Pins: rows without text (a [tokens, d_in] file) get records too: each row its own
    one-token context, top values and row ids equal to a dense top-k; provenance says the file."""
    import numpy as np
    from conftest import sae_with_decoder

    from sae.io import load, save

    g = torch.Generator().manual_seed(0)
    x = torch.randn(700, 8, generator=g)
    np.save(tmp_path / "acts.npy", x.numpy())
    W = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    save(sae_with_decoder(W, k=3), tmp_path / "m")
    cli_main(
        [
            str(tmp_path / "m"),
            "--suite",
            "records",
            "--activations",
            str(tmp_path / "acts.npy"),
            "--eval-tokens",
            "700",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    folder = tmp_path / "r" / "m" / "records"
    rec = load_file(str(folder / "records.safetensors"))
    info = RecordsInfo.read(folder)
    with torch.no_grad():
        a = load(tmp_path / "m").encode(x)
    vals, rows = a.T.sort(dim=1, descending=True)
    k = 20
    torch.testing.assert_close(rec["top_val"], vals[:, :k])
    for m in range(12):
        assert set(rec["top_id"][m].tolist()) == set(rows[m, :k].tolist())
    assert (rec["top_tok"] == -1).all() and info.tokens == 700
    assert info.activations["kind"] == "matrix" and info.logit_effects["kind"] is None
