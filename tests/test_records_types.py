"""The typed records between stages (sae/io/records.py): each round-trips through its JSON, reads
the files the stages write, refuses a mistyped field in one line, and the SAELens model card
reads the training summary through its record."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sae.cli import main
from sae.config.schema import StoreConfig, TrainConfig
from sae.io.records import (
    RecordError,
    RecordsContext,
    RecordsInfo,
    Report,
    ReportEntry,
    TrainSummary,
)
from sae.model.sae import SAEConfig
from sae.training.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny TopK SAE trained on synthetic activations (held-out generator batches)."""
    from sae.analysis.synthetic import SyntheticConfig

    tmp = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(
        activations="synthetic",
        synthetic=SyntheticConfig(d_in=16, n_features=32, mean_active=2.0, seed=1),
        total_tokens=8192,
        eval_tokens=2048,
        sae=SAEConfig(d_sae=32, k=2),
        store=StoreConfig(buffer_tokens=4096, batch_size=512, normalize=True),
        out=str(tmp / "run"),
        quiet=True,
    )
    return train(cfg)[0]


def test_saelens_card_of_a_trained_sae_shows_dead_and_dense_latents(trained, tmp_path):
    """Pins issue 31.3: the model card asked train_summary.json for `dead`, `dead_frac` and
    `dense`, keys training never writes (it writes dead_pct, dense_pct_1), so every card lacked
    the dead and dense figures. The card now reads the summary through TrainSummary."""
    summary = TrainSummary.read(trained)
    main(["export", str(trained), "--format", "saelens", "--out", str(tmp_path / "out")])
    card = (tmp_path / "out" / "README.md").read_text()
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")[1:]
        for line in card.splitlines()
        if line.startswith("| ") and line.count(" | ") == 2
    }
    on = "sae train: 2048 tokens of held-out synthetic samples (disjoint generator indices) |"
    assert rows["dead latents, % (never fired)"] == [f"{summary.dead_pct:.4g}", on], card
    assert rows["dense latents, % (fire on > 1% of tokens)"] == [
        f"{summary.dense_pct_1:.4g}",
        on,
    ], card
    assert rows["fvu"] == [f"{summary.fvu:.4g}", on], card


def test_train_summary_as_training_writes_it_round_trips(trained):
    """Pins: the file `sae train` writes is the record (every field present, typed) and its
    to_json gives back the same JSON object."""
    raw = json.loads((trained / "train_summary.json").read_text())
    s = TrainSummary.from_json(raw)
    assert None not in (s.fvu, s.l0, s.dead_pct, s.dense_pct_1, s.eval_tokens, s.eval_source)
    assert s.to_json() == raw
    assert TrainSummary.from_json(s.to_json()) == s


def test_train_summary_of_an_older_file_loads_and_a_mistyped_one_is_one_line(tmp_path):
    """Pins: fields added later default to None (a summary with only fvu and l0 loads); a field
    of the wrong type, a missing required one, or a file that is not JSON is a RecordError."""
    s = TrainSummary.from_json({"fvu": 0.25, "l0": 3, "unknown_later_key": [1]})
    assert (s.fvu, s.l0, s.dead_pct) == (0.25, 3.0, None)
    with pytest.raises(RecordError, match='dead_pct is "5"; expected a number or null'):
        TrainSummary.from_json({"fvu": 0.1, "l0": 2.0, "dead_pct": "5"})
    with pytest.raises(RecordError, match="eval_tokens is true; expected an integer or null"):
        TrainSummary.from_json({"fvu": 0.1, "l0": 2.0, "eval_tokens": True})
    with pytest.raises(RecordError, match="has no 'l0'"):
        TrainSummary.from_json({"fvu": 0.1})
    (tmp_path / "train_summary.json").write_text("{not json")
    with pytest.raises(RecordError, match="is not JSON"):
        TrainSummary.read(tmp_path)


def _info(**kw) -> RecordsInfo:
    base = dict(
        records_version=1,
        sae="s",
        sae_folder="/x/s",
        d_sae=4,
        tokens=100,
        settings={"top_k": 20},
        context=RecordsContext(before=10, after=5, pad_token=-1),
        activations={"kind": "live", "held_out": True},
        logit_effects={"kind": "unembedding"},
        correlated_latents=True,
        identity={"eval_tokens": 100, "sae_sha256": "ab"},
        token_strings={"0": "the", "1": "<script>"},
        identity_sha256="cd",
    )
    return RecordsInfo(**(base | kw))


def test_records_info_and_report_round_trip():
    """Pins: nested records (the context, report entries) come back as records, equal."""
    info = _info()
    again = RecordsInfo.from_json(json.loads(json.dumps(info.to_json())))
    assert again == info and isinstance(again.context, RecordsContext)
    assert (
        RecordsInfo.from_json(_info(correlated_latents="skipped").to_json()).correlated_latents
        == "skipped"
    )
    entry = ReportEntry(
        name="s",
        folder="/x/s",
        sae={"architecture": "topk", "d_in": 8, "d_sae": 4, "d_out": None, "k": 2},
        model="m",
        hook="resid_post.0",
        target_hook=None,
        tokens_trained=1000,
        activations={"kind": "synthetic", "held_out": True},
        results={"core": {"reconstruction": {"fvu": {"value": 0.5, "ci95": None}}}},
        figures={"core": {"density": "s/density.png"}},
    )
    rep = Report(1, "0.1", "2026-01-01T00:00:00+00:00", {"eval_tokens": 10}, ["core"], {}, [entry])
    back = Report.from_json(json.loads(json.dumps(rep.to_json())))
    assert back == rep and isinstance(back.saes[0], ReportEntry)
    assert back.entry("/x/s") == entry and back.entry("/x/t") is None
    with pytest.raises(RecordError, match=r"saes\[0\]: name is 3; expected a string"):
        Report.from_json(rep.to_json() | {"saes": [entry.to_json() | {"name": 3}]})


def test_non_finite_numbers_are_written_as_null():
    """Pins: JSON has no NaN; a non-finite FVU (zero-variance held-out rows) is stored as null
    and reads back as None instead of a file strict readers refuse."""
    s = TrainSummary(fvu=math.nan, l0=1.0)
    assert s.to_json()["fvu"] is None
    assert TrainSummary.from_json(json.loads(json.dumps(s.to_json(), allow_nan=False))).fvu is None


_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    fvu=st.none() | _finite,
    l0=st.none() | _finite,
    dead=st.none() | _finite,
    tokens=st.none() | st.integers(min_value=0, max_value=2**62),
    source=st.none() | st.text(max_size=30),
)
def test_train_summary_round_trips_any_values(fvu, l0, dead, tokens, source):
    """Pins: to_json -> JSON text -> from_json is the identity for every finite value."""
    s = TrainSummary(fvu=fvu, l0=l0, dead_pct=dead, eval_tokens=tokens, eval_source=source)
    assert TrainSummary.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_files_sae_eval_writes_are_their_records(trained, tmp_path):
    """Pins: report.json and records.json as `sae eval` writes them read back as Report and
    RecordsInfo whose to_json is the file's object again (no key the record drops or renames),
    and the model card given --report shows the eval's figures found through Report.entry."""
    from sae.eval import cli_main

    report = tmp_path / "report"
    cli_main([str(trained), "--suite", "core,records", "--eval-tokens", "2048", "--n-boot", "20",
              "--out", str(report)])  # fmt: skip
    raw = json.loads((report / "report.json").read_text())
    rep = Report.read(report)
    assert rep.to_json() == raw and rep.entry(trained) is not None
    records = report / trained.name / "records"
    raw = json.loads((records / "records.json").read_text())
    info = RecordsInfo.read(records)
    assert info.to_json() == raw and info.tokens == 2048 and info.identity_sha256
    out = tmp_path / "card"
    main(
        ["export", str(trained), "--format", "saelens", "--out", str(out), "--report", str(report)]
    )
    fvu = rep.entry(trained).results["core"]["reconstruction"]["fvu"]["value"]
    assert f"| fvu | {fvu:.4g} (95% CI" in (out / "README.md").read_text()
