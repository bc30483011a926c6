"""The suite does not depend on where it runs and writes nothing under the repository.

Pins issue 24's report: the README's two commands run in order in one clone (`sae train`, which
writes checkpoints/default, then `python -m pytest`) failed three hostile-input tests with
"out='checkpoints/default' already holds a run", because those tests train with the default
out, relative to the folder pytest was started from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from sae.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]


def test_each_test_runs_in_an_empty_folder_outside_the_repository():
    """Pins the autouse working-directory fixture: without it a test's cwd is wherever pytest
    was started (the clone's root under the README's command)."""
    cwd = Path.cwd().resolve()
    assert REPOSITORY not in (cwd, *cwd.parents)
    assert list(cwd.iterdir()) == []


STRAY_TEST = """
from pathlib import Path

def test_writes_under_the_repository():
    (Path(__file__).parent / "stray.txt").write_text("x")
"""


def test_readme_commands_in_order(tmp_path, monkeypatch):
    """The README's two commands' effects, in order, in a copy of the clone: a real run written
    by `sae train` (its default out, from the clone's root) in checkpoints/default, then pytest
    started from the clone's root. The hostile-input tests that train with the default out pass
    (they failed with 'already holds a run'), the run is untouched, and a test that does write
    under the repository is reported by the session's check (so that check can fail)."""
    clone = tmp_path / "clone"
    skip = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".hypothesis")
    for part in ("sae", "tests"):
        shutil.copytree(REPOSITORY / part, clone / part, ignore=skip)
    shutil.copy(REPOSITORY / "pyproject.toml", clone)
    (clone / "tests" / "test_zz_stray.py").write_text(STRAY_TEST)

    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).standard_normal((2048, 8), dtype=np.float32))
    monkeypatch.chdir(clone)
    small = ["--sae.d-sae", "16", "--sae.k", "2", "--store.batch-size", "256"]
    main(["train", "--activations", str(acts), *small, "--eval-tokens", "256", "--quiet"])
    run = clone / "checkpoints" / "default"
    assert (run / "config.yaml").is_file() and (run / "final").is_dir()
    run_files = sorted(p for p in run.rglob("*"))

    report = tmp_path / "report.xml"
    tests = ["tests/test_fuzz_config.py::test_known_hostile_inputs", "tests/test_zz_stray.py"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", *tests],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {c.get("name"): [e.tag for e in c if e.tag in ("failure", "error")] for c in cases}
    hostile = {n: o for n, o in outcome.items() if n.startswith("test_known_hostile_inputs")}
    assert len(hostile) == 8 and all(o == [] for o in hostile.values()), done.stdout
    assert outcome["test_writes_under_the_repository"] == ["error"], done.stdout
    assert "added tests/stray.txt" in done.stdout and done.returncode == 1, done.stdout
    assert sorted(p for p in run.rglob("*")) == run_files
