"""Hostile files: each bad SAE folder or activation file is one line on stderr (exit 2) and no
pickle is ever loaded. Before these checks, NaN weights loaded silently, integer weights and a
pickle named .safetensors raised deep tracebacks, and int/object .npy files reached training."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sae as sae_pkg
from sae.cli import main
from sae.config import ConfigError
from sae.io import save
from sae.model.sae import SAE, SAEConfig


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Any unpickling during these tests is a failure, whatever the outcome of the load."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _good(tmp_path):
    folder = tmp_path / "good"
    save(SAE(SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2)), folder)
    return folder


def _edit_cfg(key=None, **kw):
    def edit(d):
        c = json.loads((d / "cfg.json").read_text())
        (c[key] if key else c).update(kw)
        (d / "cfg.json").write_text(json.dumps(c))

    return edit


def _edit_weights(**kw):
    def edit(d):
        w = load_file(str(d / "sae_weights.safetensors")) | kw
        save_file(w, str(d / "sae_weights.safetensors"))

    return edit


def _as_pickle(d):
    (d / "sae_weights.safetensors").write_bytes(pickle.dumps({"W_enc": np.zeros(3)}))


def _torch_save_instead(d):
    (d / "sae_weights.safetensors").unlink()
    (d / "sae_weights.pt").write_bytes(b"PK\x03\x04 a torch.save zip archive")


def _saelens_with(**kw):
    def edit(d):
        c = json.loads((d / "cfg.json").read_text())
        del c["sae_config"]
        c.update(kw)
        (d / "cfg.json").write_text(json.dumps(c))

    return edit


SAE_CASES = {
    "mismatched shapes": (_edit_weights(W_enc=torch.zeros(8, 12)), "size mismatch for W_enc"),
    "a 1-D weight": (_edit_weights(W_dec=torch.zeros(16)), "W_dec: the file holds \\[16\\]"),
    "NaN weights": (_edit_weights(W_dec=torch.full((16, 8), float("nan"))), "W_dec holds 128 NaN"),
    "infinite bias": (_edit_weights(b_enc=torch.full((16,), float("inf"))), "b_enc holds 16 NaN"),
    "integer weights": (
        _edit_weights(W_enc=torch.zeros(8, 16, dtype=torch.int64)),
        "W_enc has dtype int64",
    ),
    "cfg d_sae a string": (_edit_cfg("sae_config", d_sae="16"), "d_sae='16' must be a positive"),
    "cfg k a list": (_edit_cfg("sae_config", k=[2]), "k=\\[2\\] must be a whole number"),
    "cfg architecture an int": (_edit_cfg("sae_config", architecture=3), "architecture=3"),
    "cfg sae_config a list": (_edit_cfg(sae_config=[1]), "sae_config=\\[1\\] must be an object"),
    "cfg metadata a string": (_edit_cfg(metadata="x"), "metadata='x' must be an object"),
    "SAELens k a string": (_saelens_with(k="abc"), "k='abc' must be a int or a float"),
    "SAELens architecture a list": (_saelens_with(architecture=["x"]), "must be a string"),
    "SAELens flag a string": (_saelens_with(apply_b_dec_to_input="no"), "must be a bool"),
    "cfg.json pickled": (
        lambda d: (d / "cfg.json").write_bytes(pickle.dumps({"d_in": 8}, protocol=4)),
        "cfg.json is not valid JSON",
    ),
    "pickle named .safetensors": (_as_pickle, "is a pickle or torch.save file"),
    ".pt instead of safetensors": (_torch_save_instead, "no sae_weights.safetensors"),
}


@pytest.mark.parametrize("case", list(SAE_CASES))
def test_hostile_sae_folder_is_one_clear_error(tmp_path, case, capsys):
    damage, message = SAE_CASES[case]
    folder = tmp_path / "bad"
    shutil.copytree(_good(tmp_path), folder)
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sae_pkg.load(folder)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(folder), "--suite", "core", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not (tmp_path / "r").exists()


def _npy(path, array, **kw):
    np.save(path, array, **kw)


ACTIVATION_CASES = {
    "integer matrix": (lambda p: _npy(p, np.zeros((100, 4), np.int64)), "has dtype int64"),
    "rank 3": (lambda p: _npy(p, np.zeros((100, 4, 2), np.float32)), "has shape \\[100, 4, 2\\]"),
    "rank 1": (lambda p: _npy(p, np.zeros(100, np.float32)), "has shape \\[100\\]"),
    "object array": (
        lambda p: _npy(p, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True),
        "pickled or object data is never loaded",
    ),
    "a pickle named .npy": (
        lambda p: p.write_bytes(pickle.dumps(np.zeros(3))),
        "pickled or object data is never loaded",
    ),
    "bool safetensors": (
        lambda p: save_file({"x": torch.zeros(10, 4, dtype=torch.bool)}, str(p)),
        "has dtype BOOL",
    ),
    "torch.save named .safetensors": (
        lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(64)),
        "not a readable safetensors file",
    ),
    # issue 24: these trained into a traceback (all NaN, all zero) or a run of NaN FVUs
    "all NaN": (
        lambda p: _npy(p, np.full((100, 4), np.nan, np.float32)),
        "holds no finite value \\(all 100 rows are NaN or infinite\\)",
    ),
    "all zero": (lambda p: _npy(p, np.zeros((100, 4), np.float32)), "is constant"),
    "all rows equal safetensors": (
        lambda p: save_file({"x": torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(100, 1)}, str(p)),
        "is constant \\(all 100 rows are equal: \\[1, 2, 3, ...\\]\\)",
    ),
}


@pytest.mark.parametrize("case", list(ACTIVATION_CASES))
def test_hostile_activation_file_is_one_clear_error(tmp_path, case, capsys):
    write, message = ACTIVATION_CASES[case]
    suffix = ".safetensors" if "safetensors" in case else ".npy"
    path = tmp_path / f"acts{suffix}"
    write(path)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--activations", str(path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and __import__("re").search(message, err), err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("case", ["all NaN", "all zero"])
def test_unusable_values_are_refused_by_every_command_before_any_output(tmp_path, case, capsys):
    """Issue 24 item 6: an all-NaN or all-constant matrix given to `sae train
    --eval-activations`, `sae eval --activations` or `sae export --activations` is one line on
    stderr (exit 2) and nothing is written (eval wrote a report of NaN figures; train read the
    held-out file only after training, into a traceback)."""
    write, message = ACTIVATION_CASES[case]
    bad = tmp_path / "bad.npy"
    write(bad)
    np.save(tmp_path / "good.npy", np.random.default_rng(0).standard_normal((100, 4), np.float32))
    sae_dir = tmp_path / "sae"
    save(SAE(SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2)), sae_dir)
    commands = {
        "train": ["train", "--activations", str(tmp_path / "good.npy"), "--eval-activations",
                  str(bad), "--quiet"],
        "eval": ["eval", str(sae_dir), "--activations", str(bad)],
        "export": ["export", str(sae_dir), "--activations", str(bad)],
    }  # fmt: skip
    for name, argv in commands.items():
        out = tmp_path / f"out-{name}"
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1, (name, err)
        assert __import__("re").search(message, err), (name, err)
        assert not out.exists(), name


def test_value_screen_confirms_over_the_whole_file(tmp_path):
    """The screen reads a sample; a sample that looks all-NaN or constant is confirmed over the
    whole file, so one varying (or finite) row between the sampled blocks keeps the file usable.
    Its NaN rows are then refused with their count (issue 30 item 4), or dropped on request."""
    from sae.activations.sources import MatrixSource
    from sae.io.validate import SAMPLE_BLOCK_ROWS

    n, row = 20_000, 5_000  # row 5000 falls between the 16 sampled blocks of 256 rows
    starts = np.linspace(0, n - SAMPLE_BLOCK_ROWS, 16).astype(int)
    assert not any(a <= row < a + SAMPLE_BLOCK_ROWS for a in starts)
    x = np.zeros((n, 4), np.float32)
    x[row] = 1.0
    np.save(tmp_path / "one_varies.npy", x)
    assert MatrixSource(tmp_path / "one_varies.npy").n_rows == n
    x[:] = np.nan
    x[row] = 1.0
    np.save(tmp_path / "one_finite.npy", x)
    with pytest.raises(ConfigError, match="has 19,999 rows of its 20,000 holding NaN"):
        MatrixSource(tmp_path / "one_finite.npy")
    assert MatrixSource(tmp_path / "one_finite.npy", skip_nonfinite=True).n_rows == n


def test_float16_and_float64_matrices_train_in_float32(tmp_path):
    """Known answer: any float width is read as float32 rows (float64 used to reach the SAE)."""
    from sae.activations.sources import MatrixSource

    for dtype in (np.float16, np.float64):
        np.save(tmp_path / "a.npy", np.arange(40).reshape(10, 4).astype(dtype))
        rows, _ = MatrixSource(tmp_path / "a.npy").read(0, 3)
        assert rows["activations"].dtype == torch.float32
    with pytest.raises(ConfigError):
        MatrixSource(tmp_path / "missing.npy")
