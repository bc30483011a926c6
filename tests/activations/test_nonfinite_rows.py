"""Issue 30 item 4: activation rows holding NaN or infinity. A file that was half NaN, or NaN
but for two rows, trained to exit 0 with a held-out FVU of NaN (longer runs ended in a
traceback); now such rows are refused in one line with their count and the first one's index
(exit 2), when the file is opened and, past the part scanned then, as training reads it, or
dropped and counted with `store.skip_nonfinite`. Caches, live models and `sae eval` / `sae
export --activations` follow the same rule."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import sae.io.validate as validate
from sae.activations.sources import CacheSource, LiveSource
from sae.cli import main
from sae.config import ConfigError
from sae.config.schema import DataConfig, ModelConfig, StoreConfig
from sae.fsutil import sha256_file
from sae.io import save
from sae.model.sae import SAE, SAEConfig
from sae.training.checkpoint import latest_checkpoint

D = 8


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, D), dtype=np.float32)


def _write(path, x: np.ndarray) -> str:
    if path.suffix == ".npy":
        np.save(path, x)
    else:
        save_file({"activations": torch.from_numpy(x)}, str(path))
    return str(path)


def _half_nan(n=6000):
    x = _rows(n)
    x[1::2, 3] = np.nan  # every odd row: 3000 rows, the first row 1
    return x


def _nan_but_two(n=6000):
    x = np.full((n, D), np.nan, np.float32)
    x[:2] = _rows(2)  # rows 0 and 1 are finite: 5998 bad rows, the first row 2
    return x


def _args(acts, out, *extra):
    return ["train", "--activations", acts, "--out", str(out), "--sae.d-sae", "32", "--sae.k",
            "3", "--store.batch-size", "256", "--store.buffer-tokens", "1024", "--eval-tokens",
            "512", "--quiet", *extra]  # fmt: skip


def _fails_in_one_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def _skipping(tmp_path, argv: list[str]) -> list[str]:
    """`argv` of `sae train` with a YAML config setting store.skip_nonfinite (YAML-only)."""
    path = tmp_path / "skip.yaml"
    path.write_text(yaml.safe_dump({"store": {"skip_nonfinite": True}}))
    return [argv[0], str(path), *argv[1:]]


@pytest.mark.parametrize(
    "make, name, message",
    [
        (_half_nan, "half.npy", "has 3,000 rows of its 6,000 holding NaN .*the first is row 1\\)"),
        (_half_nan, "half.safetensors", "has 3,000 rows of its 6,000 .*the first is row 1\\)"),
        (_nan_but_two, "two.npy", "has 5,998 rows of its 6,000 .*the first is row 2\\)"),
    ],
)
def test_nonfinite_rows_are_refused_before_any_output(tmp_path, capsys, make, name, message):
    """Pins the bug: these files trained to exit 0 with held-out FVU NaN. Now one line, exit
    2, with the count and first index of the bad rows, and no run folder is written."""
    acts = _write(tmp_path / name, make())
    err = _fails_in_one_line(_args(acts, tmp_path / "run"), capsys)
    assert re.search(message, err), err
    assert "store.skip_nonfinite: true" in err, err
    assert not (tmp_path / "run").exists()


def test_nonfinite_rows_past_the_start_scan_stop_the_run_resumably(tmp_path, capsys, monkeypatch):
    """A file larger than the start scan (START_SCAN_BYTES, lowered here to its first 16,384
    rows) with 10 NaN rows at row 30,000, far past the first chunk: the run stops when it reads
    them, in one line with their count and first index and no traceback (it trained through
    them before, its FVU unaffected only because their one batch was skipped), leaving its
    last checkpoint resumable; resumed with store.skip_nonfinite it finishes with a finite FVU
    and says how many rows it dropped."""
    monkeypatch.setattr(validate, "START_SCAN_BYTES", 16_384 * D * 4, raising=False)
    x = _rows(40_000)
    x[30_000:30_010] = np.inf
    x[30_005, 0] = np.nan
    acts = _write(tmp_path / "late.npy", x)
    run = tmp_path / "run"
    err = _fails_in_one_line(_args(acts, run, "--checkpoint-every", "4096"), capsys)
    assert "10 of rows 16,384 to 32,767 hold NaN or infinite values" in err, err
    assert "(the first is row 30,000)" in err and "continues with --resume" in err, err
    assert latest_checkpoint(run, report=lambda *a: None) is not None
    assert not (run / "final").exists()
    main(_skipping(tmp_path, _args(acts, run, "--resume")))
    out = capsys.readouterr().out
    assert "skipped 10 activation rows holding NaN or infinite values" in out, out
    (summary,) = (run / "final").glob("*/train_summary.json")
    assert np.isfinite(json.loads(summary.read_text())["fvu"])


def test_skip_nonfinite_trains_without_the_bad_rows_and_counts_them(tmp_path, capsys):
    """The opt-in: store.skip_nonfinite drops the rows (held-out FVU finite, where it was NaN)
    and the end of the run reports how many."""
    acts = _write(tmp_path / "half.npy", _half_nan())
    run = tmp_path / "run"
    main(_skipping(tmp_path, _args(acts, run)))
    out = capsys.readouterr().out
    assert "skipped 3,000 activation rows holding NaN or infinite values" in out, out
    (summary,) = (run / "final").glob("*/train_summary.json")
    assert np.isfinite(json.loads(summary.read_text())["fvu"])


def test_eval_and_export_refuse_nonfinite_rows(tmp_path, capsys):
    """`sae eval --activations` scored a file with NaN rows into a report of NaN figures;
    `sae export --activations` read it too. Both now refuse it in one line before writing."""
    acts = _write(tmp_path / "half.npy", _half_nan(2000))
    folder = tmp_path / "sae"
    save(SAE(SAEConfig(architecture="topk", d_in=D, d_sae=16, k=2)), folder)
    for command in ("eval", "export"):
        out = tmp_path / f"out-{command}"
        argv = [command, str(folder), "--activations", acts, "--out", str(out)]
        err = _fails_in_one_line(argv, capsys)
        assert "has 1,000 rows of its 2,000 holding NaN" in err, (command, err)
        assert "(the first is row 1)" in err, (command, err)
        assert not out.exists(), command


def _poisoned_cache(tiny_models, text_file, tmp_path):
    """A harvested cache whose second shard's rows 5-9 are NaN (sha256 updated to match)."""
    from sae.activations.harvest import harvest
    from sae.config.schema import HarvestConfig

    cfg = HarvestConfig(
        model=ModelConfig(name=tiny_models["llama"], hooks=["resid_post.1"], batch_windows=3),
        data=DataConfig(source=text_file, context_size=16),
        out=str(tmp_path / "cache"),
        shard_tokens=300,
        max_tokens=900,
        quiet=True,
    )
    out = harvest(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][1]
    tensors = load_file(str(out / entry["file"]))
    tensors["acts.resid_post.1"][5:10] = float("nan")
    save_file(tensors, str(out / entry["file"]))
    entry["sha256"] = sha256_file(out / entry["file"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    first = manifest["shards"][0]["n_tokens"] + 5
    return out, first


def test_caches_follow_the_same_rule(tiny_models, text_file, tmp_path, monkeypatch):
    """An activation cache with NaN rows streamed them into training; now it is refused when
    opened (count and first index), as its pieces are read when it is past the start scan, and
    its rows are dropped and counted with skip_nonfinite."""
    out, first = _poisoned_cache(tiny_models, text_file, tmp_path)
    with pytest.raises(ConfigError, match=rf"has 5 rows of its .* \(the first is row {first}\)"):
        CacheSource(out)
    monkeypatch.setattr(validate, "START_SCAN_BYTES", 4, raising=False)  # scan one row
    source = CacheSource(out)
    with pytest.raises(ConfigError, match=rf"5 of rows 0 to .* \(the first is row {first}\)"):
        list(source.pieces())
    skipping = CacheSource(out, skip_nonfinite=True)
    n = sum(len(p.rows["resid_post.1"]) for p in skipping.pieces())
    assert (n, skipping.skipped_rows) == (skipping.n_rows - 5, 5)


def test_live_models_computing_nan_are_refused(tiny_models, text_file):
    """A model that computes NaN activations fed them to training; now a live source refuses
    them in one line naming the window and position, or drops them with skip_nonfinite."""
    from sae.activations.capture import load_model

    model_cfg = ModelConfig(name=tiny_models["llama"], hooks=["resid_post.1"], batch_windows=2)
    data_cfg = DataConfig(source=text_file, context_size=16, max_windows=4)
    model, tok = load_model(model_cfg)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    source = LiveSource(model_cfg, data_cfg, StoreConfig(), model=model, tokenizer=tok)
    with pytest.raises(ConfigError, match=r"computed NaN or infinite activations at resid_post.1"
                       r" for (\d+) of \1 tokens \(the first in window 0, position 1\)"):  # fmt: skip
        next(source.pieces())
    skipping = LiveSource(
        model_cfg, data_cfg, StoreConfig(skip_nonfinite=True), model=model, tokenizer=tok
    )
    assert sum(len(p.rows["resid_post.1"]) for p in skipping.pieces()) == 0
    assert skipping.skipped_rows > 0
