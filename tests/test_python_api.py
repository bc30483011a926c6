"""The Python API README.md shows: `from sae import SAEConfig, TrainConfig, train`, run exactly as
written there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _readme_training_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "from sae import" in b and "train(" in b]
    return block


def test_readme_python_training_snippet_runs(tmp_path, monkeypatch):
    """Pins issue 31.4: training had no documented Python entry point, and a script that trained
    through `sae.config.TrainConfig` broke when the class moved. README's snippet (imports from
    `sae` itself) trains a tiny synthetic run and opens the SAE it returns."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_training_snippet(), "README.md", "exec"), scope)
    folder, d = Path(scope["folder"]), scope["d"]
    assert folder.resolve().parent == (tmp_path / "checkpoints" / "python" / "final").resolve()
    assert d.cfg.architecture == "topk" and (d.cfg.d_in, d.cfg.d_sae, d.cfg.k) == (256, 512, 8)


def test_old_config_import_path_still_works():
    """Pins issue 31.4: scripts import TrainConfig from sae.config.schema (the last round's
    path); it stays the same class as `sae.TrainConfig`."""
    import sae
    from sae.config.schema import TrainConfig

    assert sae.TrainConfig is TrainConfig
