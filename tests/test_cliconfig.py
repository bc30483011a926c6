"""`sae train`'s command line and YAML: a short --help with units, removed and YAML-only fields
refused in one line, the configs/ files still loading, and every architecture training alone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import sae
from sae.cli import main
from sae.config import ConfigError
from sae.config.parse import load_yaml, parse
from sae.config.schema import HarvestConfig, TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def test_train_help_shows_at_most_40_leaf_fields(capsys):
    """Pins issue 9's budget: `sae train --help` listed 76 leaf fields; at most 40 now."""
    flags = set(re.findall(r"^[\s│]*(--[a-z][a-z0-9.-]*)", _help(capsys), re.M))
    assert 25 <= len(flags) <= 40, sorted(flags)
    assert "--sae.architecture" in flags and "--synthetic.d-in" not in flags


def test_every_train_config_file_still_loads():
    """configs/*.yaml of the README keep working after fields moved or became constants."""
    for path in CONFIGS.glob("*.yaml"):
        cls = HarvestConfig if path.name.startswith("harvest") else TrainConfig
        load_yaml(cls, path)


def test_removed_field_is_one_line_in_yaml_and_as_a_flag(tmp_path, capsys):
    """A knob that became a constant names its fixed value; an older run's config.yaml that
    holds exactly that value still loads."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"grad_clip": 5.0}))
    with pytest.raises(
        ConfigError, match=r"grad_clip can no longer be set: it is now fixed at 1.0"
    ):
        load_yaml(TrainConfig, bad)
    with pytest.raises(
        ConfigError, match=r"lr_warmup can no longer be set: it is now fixed at 0.01"
    ):
        parse(TrainConfig, ["--lr-warmup", "0.2"], "sae train")
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump(
            {"grad_clip": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "keep_checkpoints": 2}
        )
    )
    assert load_yaml(TrainConfig, old) == TrainConfig()
    # β1 0.9 and β2 0.999 were fixed before they became 0.8 and 0.99: older runs' config.yaml
    # loads, with a note for each.
    err = capsys.readouterr().err
    assert "adam_beta1=0.9 (an older run's value) is ignored" in err
    assert "adam_beta2=0.999 (an older run's value) is ignored" in err
    old.write_text(yaml.safe_dump({"adam_beta2": 0.9}))
    with pytest.raises(
        ConfigError, match=r"adam_beta2 can no longer be set: it is now fixed at 0.99"
    ):
        load_yaml(TrainConfig, old)


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
