"""Dependency floors in pyproject.toml match the APIs the code calls."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _floor(name: str) -> Version:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == name)
    return min(Version(s.version) for s in req.specifier if s.operator in (">=", "=="))


def test_transformers_floor_has_the_dtype_argument():
    """Pins the old floor (4.40): capture.py calls from_pretrained(dtype=...), which transformers
    accepts from 4.56 on (huggingface/transformers#39782 renamed torch_dtype); older versions
    only know torch_dtype, so model.dtype would not reach the model."""
    source = (ROOT / "sae" / "activations" / "capture.py").read_text()
    assert re.search(r"from_pretrained\([^)]*\bdtype=", source)
    assert _floor("transformers") >= Version("4.56")


def test_tyro_floor_has_the_constructor_registry_argument():
    """Pins the old floor (0.8): sae/config/parse.py passes `registry=` to tyro.cli, which tyro accepts
    from 0.9.19 on; the command line was checked with tyro 1.0.0 and 1.0.17 only."""
    source = (ROOT / "sae" / "config" / "parse.py").read_text()
    assert "registry=_registry(cls)" in source
    assert _floor("tyro") >= Version("1.0")


def test_torch_floor_has_a_weights_only_loader_without_known_bypass():
    """Pins issue 25.3: ae.pt files from the Hub are read with torch.load(weights_only=True),
    whose restricted unpickler could be bypassed before 2.6.0 (CVE-2025-32434) and before 2.10.0
    (CVE-2026-24747), yet the floor was torch>=2.2. The floor is now at least 2.10, and it is the
    release below which sae/io/validate.py refuses ae.pt."""
    from sae.io.validate import SAFE_TORCH_LOAD

    assert _floor("torch") >= Version("2.10")
    assert _floor("torch").release[:2] == SAFE_TORCH_LOAD
