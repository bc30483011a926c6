"""latents.parquet: the capacity and synthetic suites write their per-latent figures there."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import sae_with_decoder

from sae.analysis.synthetic import SyntheticConfig, SyntheticData
from sae.eval import cli_main
from sae.eval.table import read_latents_table, update_latents_table
from sae.io import save

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def known_frame() -> torch.Tensor:
    """7 equal-norm vectors of a harmonic tight frame in R^4 (C = 4/7 each), an antipodal pair
    on e5 (C = 1/2 each) and e6 alone (C = 1): known answers of docs/methods.md#capacity,
    10 features in R^6."""
    j = torch.arange(7, dtype=torch.float64)
    a = 2 * math.pi * j / 7
    H = torch.stack([a.cos(), a.sin(), (2 * a).cos(), (2 * a).sin()], 1) / math.sqrt(2)
    W = torch.zeros(10, 6, dtype=torch.float64)
    W[:7, :4] = H
    W[7, 4], W[8, 4], W[9, 5] = 1.0, -1.0, 1.0
    return W.float()


def test_capacity_suite_writes_each_latents_capacity(tmp_path):
    """Pins: the table holds the per-latent capacities the suite computes (4/7 ×7, 1/2 ×2, 1),
    their classes and block ids, readable by pandas."""
    x = torch.randn(4000, 6, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "acts.npy", x.numpy())
    save(sae_with_decoder(known_frame(), k=9), tmp_path / "frame")
    cli_main(
        [
            str(tmp_path / "frame"),
            "--suite",
            "capacity",
            "--activations",
            str(tmp_path / "acts.npy"),
            "--eval-tokens",
            "4000",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    df = pd.read_parquet(tmp_path / "r" / "frame" / "latents.parquet")
    assert df["latent"].tolist() == list(range(10))
    expected = [4 / 7] * 7 + [0.5, 0.5, 1.0]
    np.testing.assert_allclose(df["capacity_geometric"], expected, rtol=1e-5)
    assert df["class_geometric"].tolist() == ["polysemantic"] * 9 + ["monosemantic"]
    # Block threshold 3/√d > 1 at d = 6: no pair joins, every latent is its own block.
    assert sorted(df["block"].tolist()) == list(range(10))
    assert df["capacity_usage_weighted"].between(0, 1).all()
    _, owners = read_latents_table(tmp_path / "r" / "frame" / "latents.parquet")
    assert owners["capacity_geometric"] == "capacity"


def test_synthetic_suite_writes_the_best_true_feature_of_each_latent(tmp_path):
    """Pins: a decoder that is a permutation of the true dictionary matches each latent to the
    true feature it was copied from, at cosine 1."""
    gen = SyntheticConfig(d_in=16, n_features=24, mean_active=3.0, seed=1)
    true_ND = SyntheticData(gen).dictionary_ND
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    save(
        sae_with_decoder(true_ND[perm]),
        tmp_path / "syn",
        metadata={"model_name": "synthetic", "synthetic": dataclasses.asdict(gen)},
    )
    cli_main(
        [
            str(tmp_path / "syn"),
            "--suite",
            "synthetic",
            "--eval-tokens",
            "500",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    df = pd.read_parquet(tmp_path / "r" / "syn" / "latents.parquet")
    assert df["synthetic_best_match"].tolist() == perm.tolist()
    np.testing.assert_allclose(df["synthetic_best_cos"], 1.0, atol=1e-5)


def test_update_keeps_other_suites_columns_and_checks_lengths(tmp_path):
    """Pins: one suite's write erasing another's columns; a column of the wrong length."""
    path = tmp_path / "latents.parquet"
    update_latents_table(path, {"a": np.arange(3.0)}, "one", 3)
    update_latents_table(path, {"b": ["x", "<y>", "z"]}, "two", 3)
    update_latents_table(path, {"a": np.ones(3)}, "one", 3)
    df = pd.read_parquet(path)
    assert df.columns.tolist() == ["latent", "a", "b"] and df["a"].tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="has 2 rows"):
        update_latents_table(path, {"c": [1, 2]}, "three", 3)


def test_a_suites_write_drops_the_columns_it_no_longer_writes(tmp_path):
    """Issue 24: a rerun of a suite that no longer computes a column (interpret without the
    LLM) left the earlier run's column in place, and the exports published it as current. A
    suite's write now replaces all its columns; other suites' columns stay."""
    path = tmp_path / "latents.parquet"
    update_latents_table(
        path, {"interp_f1": np.ones(3), "interp_llm_f1": np.ones(3)}, "interpret", 3
    )
    update_latents_table(path, {"b": np.zeros(3)}, "records", 3)
    update_latents_table(path, {"interp_f1": np.zeros(3)}, "interpret", 3)
    table, owners = read_latents_table(path)
    assert table.column_names == ["latent", "interp_f1", "b"]
    assert owners == {"latent": "index", "interp_f1": "interpret", "b": "records"}
