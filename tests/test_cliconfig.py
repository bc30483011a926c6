"""`sae train`'s command line and YAML: a short --help with units that names the YAML-only
fields (as README says), unknown and YAML-only flags refused in one line, the configs/ files
still loading, and every architecture training alone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import sae
from sae.cli import main
from sae.config import ConfigError
from sae.config.parse import leaf_fields, load_yaml, parse, yaml_only
from sae.config.schema import HarvestConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def test_train_help_shows_at_most_40_leaf_fields(capsys):
    """Pins issue 9's budget: `sae train --help` listed 76 leaf fields; at most 40 now."""
    flags = set(re.findall(r"^[\s│]*(--[a-z][a-z0-9.-]*)", _help(capsys), re.M))
    assert 25 <= len(flags) <= 40, sorted(flags)
    assert "--sae.architecture" in flags and "--synthetic.d-in" not in flags


def test_train_help_and_readme_agree_on_the_fields_listed(capsys):
    """Issue 26: README said `sae train --help` lists every field while 28 were hidden. Now
    every leaf field is either a flag in --help or named on its YAML-only line, never both, and
    README's sentence names exactly the YAML-only ones (the fields typed `Suppress`)."""
    text = " ".join(_help(capsys).split())
    flags = set(re.findall(r"(?:^|[ │])(--[a-z][a-z0-9.-]*)", text))
    (line,) = re.findall(r"Set in the YAML config file only: (.*?)\.(?: |$)", text)
    named_in_help = set(line.split(", "))
    hidden = set(yaml_only(TrainConfig))
    for leaf in leaf_fields(TrainConfig):
        owner = next((h for h in hidden if leaf == h or leaf.startswith(h + ".")), None)
        flag = "--" + leaf.replace("_", "-")
        if owner is None:
            assert flag in flags, leaf
        else:
            assert flag not in flags, leaf
            assert (owner if owner == leaf else owner + ".*") in named_in_help, leaf
    assert {n.removesuffix(".*") for n in named_in_help} == hidden
    readme = " ".join((ROOT / "README.md").read_text().split())
    start = readme.index("`sae train --help` lists every field")
    sentence = readme[start : readme.index(" section.", start)]
    names = re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9*]+)?)`", sentence)
    assert {n.removesuffix(".*") for n in names} == hidden, sorted(set(names) ^ hidden)


def test_every_train_config_file_still_loads():
    """configs/*.yaml of the README keep working after fields moved or became constants."""
    for path in CONFIGS.glob("*.yaml"):
        cls = HarvestConfig if path.name.startswith("harvest") else TrainConfig
        load_yaml(cls, path)


def test_field_removed_before_release_is_an_unknown_key(tmp_path):
    """Issue 26: the pre-release migration table is gone, so a knob that became a constant
    (grad_clip, lr_warmup) gets the ordinary one-line unknown-key error, naming the key and, in
    YAML, the valid ones (it used to get a message of its own and load at its old value)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"grad_clip": 1.0}))
    with pytest.raises(ConfigError, match=r"unknown field 'grad_clip' .* valid fields are \["):
        load_yaml(TrainConfig, bad)
    with pytest.raises(ConfigError, match=r"unknown option --lr-warmup"):
        parse(TrainConfig, ["--lr-warmup", "0.2"], "sae train")


def test_yaml_only_field_flag_is_refused_but_yaml_sets_it(tmp_path):
    """Hidden fields keep working from YAML (configs/synthetic.yaml) and say so as flags."""
    with pytest.raises(ConfigError, match=r"synthetic is set in the YAML config file only"):
        parse(TrainConfig, ["--synthetic.d-in", "8"], "sae train")
    cfg = parse(TrainConfig, [str(CONFIGS / "synthetic.yaml"), "--sae.k", "7"], "sae train")
    assert cfg.synthetic.d_in == 256 and cfg.sae.k == 7


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_every_architecture_trains_from_its_name_alone(tmp_path, capsys, arch):
    """`--sae.architecture X` with nothing else must train (matryoshka used to stop with
    'matryoshka_prefixes=[] must be non-empty')."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((2048, 16)).astype(np.float32))
    main(
        ["train", "--activations", str(tmp_path / "x.npy"), "--sae.architecture", arch,
         "--sae.d-sae", "64", "--sae.k", "4", "--store.batch-size", "256",
         "--store.buffer-tokens", "1024", "--out", str(tmp_path / "run"), "--quiet"]
    )  # fmt: skip
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert sae.load(folder).cfg.architecture == arch


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["eval", "{dir}", "--eval-tokens", "abc"], "eval_tokens='abc'"),
        (["export", "{dir}", "--np-layer", "x"], "np_layer='x'"),
        (["eval", "{dir}", "--n-boots", "3"], "unknown option --n-boots (did you mean --n-boot?)"),
    ],
)
def test_eval_and_export_flags_fail_in_one_line(tmp_path, capsys, argv, expect):
    """Pins the defect: only `sae train` turned tyro's multi-line error box into one line;
    `sae eval DIR --eval-tokens abc` and `sae export DIR --np-layer x` printed the box. All
    commands now read flags through the same path."""
    with pytest.raises(SystemExit) as e:
        main([w.format(dir=tmp_path) for w in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and expect in err, err


def test_yaml_value_is_read_as_its_flag_reads_it(tmp_path):
    """Pins issue 31.1: YAML values had a type checker of their own (config/values.py) beside
    tyro's, and its YAML 1.2 float rule turned `data.source: 1e-3` (a file name) into the float
    0.001, refused as 'must be a string'. Each value now goes through tyro's constructor for its
    field: a string field keeps the word, a float field reads 1e-3 as a number."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  source: 1e-3\nlr: 1e-3\nautocast: true\n")
    cfg = load_yaml(TrainConfig, path)
    assert cfg.data.source == "1e-3" and cfg.lr == 1e-3 and cfg.autocast is True
