"""`model.dtype: auto`: bfloat16 where the device multiplies it natively, float32 elsewhere,
resolved when the config is made so that saved configs and SAE metadata name what ran."""

from __future__ import annotations

import pytest
import torch
import torch.cpu
import yaml

import sae.config.hardware
from sae.activations.capture import load_model, model_metadata
from sae.config import ConfigError
from sae.config.parse import save_yaml
from sae.config.schema import ModelConfig, TrainConfig

PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    """torch.cpu answers for a CPU with or without AVX512-BF16 and AMX (conftest switches the
    probes off for the session; they are switched back on here)."""
    monkeypatch.setattr(sae.config.hardware, "CPU_BF16_CHECKS", PROBES)
    monkeypatch.setattr(torch.cpu, PROBES[0], lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, PROBES[1], lambda: amx)


def test_torch_still_has_the_cpu_probes():
    """Pins the private torch.cpu probes `auto` relies on: were they renamed, `auto` would
    silently fall back to float32 on every CPU."""
    for name in PROBES:
        assert isinstance(getattr(torch.cpu, name)(), bool)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, "float32"), (True, False, "bfloat16"), (False, True, "bfloat16")],
)
def test_auto_on_cpu_follows_the_bf16_units(monkeypatch, avx512_bf16, amx, expected):
    """Known answer: AVX2 or plain AVX512 emulate bf16 (slower than fp32); AVX512-BF16 and AMX
    multiply it natively. An explicit dtype is kept whatever the CPU."""
    _cpu(monkeypatch, avx512_bf16, amx)
    assert ModelConfig(device="cpu").dtype == expected
    assert ModelConfig(device="cpu", dtype="float32").dtype == "float32"
    assert ModelConfig(device="cpu", dtype="float16").dtype == "float16"


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "float32"), ((8, 0), "bfloat16")])
def test_auto_on_cuda_needs_ampere(monkeypatch, capability, expected):
    """Known answer: bf16 tensor cores start at compute capability 8.0 (A100); a T4 (7.5)
    keeps float32. 'auto' as the device means CUDA when present."""
    _cpu(monkeypatch, False, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert ModelConfig(device="cuda").dtype == expected
    assert ModelConfig(device="cuda:1").dtype == expected
    assert ModelConfig(device="auto").dtype == expected
    assert ModelConfig(device="cpu").dtype == "float32"


def test_auto_is_resolved_in_the_saved_config_the_metadata_and_the_model(
    monkeypatch, tiny_models, tmp_path
):
    """Pins the resolution point: config.yaml and the SAE metadata must say 'bfloat16', not
    'auto', or a resume or `sae eval` on another machine would load the model another way; and
    the model really computes in bfloat16."""
    _cpu(monkeypatch, True, False)
    model_cfg = ModelConfig(name=tiny_models["bert"], device="cpu")
    save_yaml(TrainConfig(model=model_cfg, out=str(tmp_path / "run")), tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["model"]["dtype"] == "bfloat16"
    assert model_metadata(model_cfg)["model_dtype"] == "bfloat16"
    model, _ = load_model(model_cfg)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_dtype_is_one_sentence():
    """Bad input names the value and the valid ones, 'auto' among them."""
    with pytest.raises(ConfigError, match=r"model.dtype='fp8' is not one of \['auto', "):
        ModelConfig(dtype="fp8")
