"""The tiny GPT-2 + text + random SAE fixtures of tests/export, shared with these tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from export_fixtures import script_model, script_sae, script_text  # noqa: E402, F401
