"""Dependency floors in pyproject.toml match the APIs the code calls."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
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


def test_tyro_floor_has_the_constructor_api():
    """Pins the old floor (0.8): sae/config/parse.py reads YAML values through tyro's public
    constructor API (`tyro.constructors.PrimitiveTypeInfo.make`, `ConstructorRegistry`), and
    schema.py's `Autocast` is an `Annotated` PrimitiveConstructorSpec, both of tyro 1.0; the
    command line was checked with tyro 1.0.17 only."""
    source = (ROOT / "sae" / "config" / "parse.py").read_text()
    assert "PrimitiveTypeInfo.make(" in source
    assert _floor("tyro") >= Version("1.0")


def test_torch_floor_has_a_weights_only_loader_without_known_bypass():
    """Pins issue 25.3: ae.pt files from the Hub are read with torch.load(weights_only=True),
    whose restricted unpickler could be bypassed before 2.6.0 (CVE-2025-32434) and before 2.10.0
    (CVE-2026-24747), yet the floor was torch>=2.2. The floor is now at least 2.10, and it is the
    release below which sae/io/validate.py refuses ae.pt."""
    from sae.io.validate import SAFE_TORCH_LOAD

    assert _floor("torch") >= Version("2.10")
    assert _floor("torch").release[:2] == SAFE_TORCH_LOAD


def _deptry(*args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("tomllib")  # deptry reads pyproject.toml with it (Python >= 3.11)
    if importlib.util.find_spec("deptry") is None:
        pytest.fail("deptry is missing: it is in the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "deptry", ".", "--no-ansi", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


# The modules sae/ may import from an optional extra (each behind a check or a fallback that
# names the extra: test_each_optional_part_names_its_extra), and their extras.
OPTIONAL_IMPORTS = {"wandb": "wandb", "sae_lens": "saelens", "transformer_lens": "saelens"}


def test_every_import_is_declared():
    """Pins issue 30.5: sae/interpret/llm.py imported httpx, which pyproject.toml did not declare
    (huggingface_hub brought it until it moved to httpx2), so after the README's
    `pip install -e .` `sae eval --help` died with ModuleNotFoundError; scikit-learn
    (interpret/absorption.py) came only through sentence-transformers and sae_lens only with the
    dev extra. deptry now finds every import in sae/, top-level or inside a function, declared
    in pyproject.toml (and no core dependency unused); and, counting every extra as optional,
    that only the OPTIONAL_IMPORTS come from an extra, so a core command imports only core
    dependencies."""
    r = _deptry()
    assert r.returncode == 0, r.stdout + r.stderr
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = ",".join(project["optional-dependencies"])
    r = _deptry(
        "--optional-dependencies-dev-groups",
        extras,
        "--per-rule-ignores",
        "DEP004=" + "|".join(OPTIONAL_IMPORTS),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _hide(monkeypatch, module: str) -> None:
    """Make `import module` (and its submodules, loaded or not) raise ImportError."""
    for name in [m for m in sys.modules if m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)


def test_each_optional_part_names_its_extra(monkeypatch, tmp_path):
    """Pins issue 30.5: an optional part must say in one line which extra to install when its
    package is missing. `sae.load` of a SAELens release without sae-lens asked "is sae-lens
    installed?" (sae-lens was only in the dev extra); the s3:// cache named `sae[s3]`, which
    pip reads as the registry's `sae`. Each now names `pip install -e '.[EXTRA]'`."""
    import sae
    from sae.activations.cachefs import CacheLocation
    from sae.config import ConfigError
    from sae.config.schema import TrainConfig

    for module in ("wandb", "sae_lens", "s3fs", "transformer_lens"):
        _hide(monkeypatch, module)
    with pytest.raises(ValueError, match=re.escape("pip install -e '.[saelens]'")) as e:
        sae.load("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=re.escape("pip install -e '.[s3]'")) as e:
        CacheLocation("s3://some-bucket/caches/l3")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=re.escape("pip install -e '.[wandb]'")) as e:
        TrainConfig(wandb="offline", out=str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    # TransformerLens only names models: without it a name passes unchanged.
    from sae.activations.capture import hub_model_name

    assert hub_model_name("gpt2-small") == "gpt2-small"
    extras = pytest.importorskip("tomllib").loads((ROOT / "pyproject.toml").read_text())
    extras = extras["project"]["optional-dependencies"]
    assert {"wandb", "s3", "saelens"} <= set(extras) and set(OPTIONAL_IMPORTS.values()) <= set(
        extras
    )


# Releases below which a package that reads files or answers from elsewhere has a known
# vulnerability on a path sae uses (pyproject.toml's comments say which).
FIXED_IN = {
    "pyarrow": ("14.0.1", "CVE-2023-47248: a crafted Parquet/IPC file ran code"),
    "transformers": ("5.5", "CVE-2026-4372, CVE-2026-5241: a Hub config.json ran Hub code"),
    "torch": ("2.10", "CVE-2025-32434, CVE-2026-24747: weights_only=True bypassed"),
    "httpx": ("0.23", "CVE-2021-41945: URL parsing"),
}


def test_floors_have_no_known_vulnerability():
    """Pins issue 30.5: the floors admitted releases with known vulnerabilities on paths sae
    uses: pyarrow>=14 allowed 14.0.0, whose Parquet reader runs code from a crafted file
    (CVE-2023-47248), and transformers>=4.56 allowed the releases before 5.3/5.5 in which a
    model's config.json from the Hub runs code despite trust_remote_code=False (CVE-2026-4372,
    CVE-2026-5241)."""
    for name, (fixed, why) in FIXED_IN.items():
        assert _floor(name) >= Version(fixed), f"{name} floor {_floor(name)} < {fixed} ({why})"
