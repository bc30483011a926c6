"""Hostile configs: hypothesis writes YAML files and command lines full of wrong types, values
out of range, misspelled keys, partial sections, sweep items and numbers spelled `1e-3`, `.5`
or `1_000`. Every one must either be a valid run or stop with exactly one line on stderr that
names the field (exit code 2), and write nothing: zero tracebacks.

Pins the issue's three examples (`lr: 1e-3` read as a string by PyYAML, `sae: {k: -3}` as a
traceback from YAML loading, `--sweep lr=1e-3` crashing inside Adam) and tyro's multi-line
error boxes for a bad flag value or an unknown flag."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae.cli import main

NUMBERS = ["1e-3", ".5", "1_000", "-3", "0", "2.5", "1e400", ".nan", "-.inf", "3"]
OTHERS = ["abc", "'12'", "[1, 2]", "{a: 1}", "null", "true", "''", "[]"]
SPELLINGS = NUMBERS + OTHERS
FIELDS = [
    "lr",
    "lr_warmup",
    "lr_decay",
    "sparsity_warmup",
    "adam_beta1",
    "grad_clip",
    "epochs",
    "total_tokens",
    "eval_tokens",
    "dead_tokens",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "seed",
    "b_dec_init",
    "wandb",
    "store.batch_size",
    "store.buffer_tokens",
    "store.normalize",
    "store.seed",
    "sae.k",
    "sae.d_sae",
    "sae.architecture",
    "sae.aux_coefficient",
    "sae.l1_coefficient",
    "sae.apply_b_dec_to_input",
]


class _Valid(Exception):
    """Raised in place of training: the config passed every check."""


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "acts.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4096, 8), dtype=np.float32))
    return str(path)


@pytest.fixture
def no_training(monkeypatch):
    """Build the Trainer (sources, SAEs, optimizers: every check that runs before work) but do
    not train."""
    import sae.training.train as train_module

    def build_only(cfg):
        train_module.Trainer(cfg)
        raise _Valid

    monkeypatch.setattr(train_module, "train", build_only)


def _run(argv: list[str], capsys) -> tuple[str, str]:
    """('valid' | 'error', the error line); anything else (a traceback) fails the test."""
    capsys.readouterr()
    try:
        main(argv)
    except _Valid:
        return "valid", ""
    except SystemExit as e:
        err = capsys.readouterr().err.strip()
        assert e.code == 2, (argv, e.code, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        return "error", lines[0]
    raise AssertionError(f"{argv} neither trained nor failed")


def _yaml(entries: dict[str, str]) -> str:
    top: list[str] = []
    sections: dict[str, list[str]] = {}
    for path, value in entries.items():
        if "." in path:
            section, key = path.split(".", 1)
            sections.setdefault(section, []).append(f"  {key}: {value}")
        else:
            top.append(f"{path}: {value}")
    for section, lines in sections.items():
        top += [f"{section}:", *lines]
    return "\n".join(top) + "\n"


def _misspell(draw, name: str) -> str:
    i = draw(st.integers(0, len(name) - 1))
    return draw(st.sampled_from([name[:i] + name[i + 1 :], name[:i] + name[i] * 2 + name[i:]]))


@st.composite
def yaml_configs(draw):
    entries = {
        f: draw(st.sampled_from(SPELLINGS))
        for f in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True))
    }
    if draw(st.booleans()):
        key = draw(st.sampled_from(FIELDS))
        section, _, name = key.rpartition(".")
        bad = _misspell(draw, name)
        entries[f"{section}.{bad}" if section else bad] = "1"
    return entries


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entries=yaml_configs())
def test_fuzzed_yaml_is_valid_or_one_line(entries, acts, tmp_path, no_training, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(_yaml(entries))
    out = tmp_path / "out"
    kind, line = _run(["train", str(path), "--activations", acts, "--out", str(out)], capsys)
    assert not out.exists()
    if kind == "error" and entries:
        names = {p.rpartition(".")[2] for p in entries}
        assert any(n in line or n.replace("_", "-") in line for n in names), (entries, line)


@st.composite
def command_lines(draw):
    argv: list[str] = []
    for f in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        flag = "--" + f.replace("_", "-")
        value = draw(st.sampled_from(NUMBERS + ["abc", "true", "None"]))
        argv += [f"{flag}={value}"] if draw(st.booleans()) else [flag, value]
    if draw(st.booleans()):
        key = draw(st.sampled_from(["k", "lr", "d_sae", "architecture", "kk", "l1_coefficient"]))
        argv += ["--sweep", f"{key}={draw(st.sampled_from(SPELLINGS[:12]))}", "k=4"]
    return argv


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(flags=command_lines())
def test_fuzzed_command_line_is_valid_or_one_line(flags, acts, tmp_path, no_training, capsys):
    out = tmp_path / "out"
    _run(["train", "--activations", acts, "--out", str(out), *flags], capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("yaml_text", "flags", "expect"),
    [
        ("lr: 1e-3\n", [], "valid"),  # PyYAML alone reads 1e-3 as the string '1e-3'
        ("lr: .5e-2\nstore:\n  batch_size: 1_024\n", [], "valid"),
        ("sae:\n  k: -3\n", [], "k=-3"),
        ("", ["--sweep", "lr=1e-3", "lr=2e-3"], "valid"),
        ("", ["--sweep", "lr=abc"], "lr='abc'"),
        ("", ["--lr", "abc"], "lr"),
        ("", ["--nonsense", "3"], "nonsense"),
        ("", ["--sae.kk", "3"], "kk"),
    ],
)
def test_known_hostile_inputs(yaml_text, flags, expect, acts, tmp_path, no_training, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text or "{}\n")
    kind, line = _run(["train", str(path), "--activations", acts, *flags], capsys)
    assert kind == expect if expect == "valid" else (kind == "error" and expect in line), line


def test_partial_store_section_keeps_normalisation(tmp_path):
    """Pins the defect: `store: {batch_size: 128}` built StoreConfig() whose normalize default
    (False) differs from training's (True), silently turning normalisation off."""
    from sae.config.schema import TrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("store:\n  batch_size: 128\n")
    cfg = _load_train_yaml(path)
    assert cfg.store.batch_size == 128
    assert cfg.store.normalize == TrainConfig().store.normalize is True


def _load_train_yaml(path):
    from sae.config.parse import load_yaml
    from sae.config.schema import TrainConfig

    return load_yaml(TrainConfig, path)


def test_scientific_notation_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nsae:\n  l1_coefficient: 5E+0\n")
    cfg = _load_train_yaml(path)
    assert cfg.lr == 1e-3 and cfg.sae.l1_coefficient == 5.0
    assert re.fullmatch(r"[\d.e+-]+", repr(cfg.lr))
