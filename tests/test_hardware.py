"""`model.dtype: auto`: bfloat16 where the device multiplies it natively, float32 elsewhere,
resolved when the config is made so that saved configs and SAE metadata name what ran."""

from __future__ import annotations

import platform

import pytest
import torch
import yaml

import sae.hardware
from sae.activations.capture import load_model, model_metadata
from sae.cliconfig import save_yaml
from sae.config import ConfigError, ModelConfig, TrainConfig


def _flags(monkeypatch, *flags):
    monkeypatch.setattr(sae.hardware, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("avx2", "avx512f"), "float32"),
        (("avx2", "avx512_bf16"), "bfloat16"),
        (("amx_bf16",), "bfloat16"),
    ],
)
def test_auto_on_cpu_follows_the_bf16_flags(monkeypatch, flags, expected):
    """Known answer: AVX512F alone emulates bf16 (slower than fp32), AVX512-BF16 and AMX-BF16
    multiply it natively; an explicit dtype is kept whatever the CPU."""
    _flags(monkeypatch, *flags)
    assert ModelConfig(device="cpu").dtype == expected
    assert ModelConfig(device="cpu", dtype="float32").dtype == "float32"
    assert ModelConfig(device="cpu", dtype="float16").dtype == "float16"


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "float32"), ((8, 0), "bfloat16")])
def test_auto_on_cuda_needs_ampere(monkeypatch, capability, expected):
    """Known answer: bf16 tensor cores start at compute capability 8.0 (A100); a T4 (7.5)
    keeps float32. 'auto' as the device means CUDA when present."""
    _flags(monkeypatch)
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
    _flags(monkeypatch, "avx512_bf16")
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


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads x86 Linux flags"
)
def test_cpu_flags_reads_this_machine(tmp_path):
    """The cpuinfo parser finds the flags line (every x86-64 CPU has SSE2), and a file without
    one (an ARM cpuinfo says 'Features') gives no flags, hence float32."""
    assert "sse2" in sae.hardware.read_flags()
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert sae.hardware.read_flags(str(arm)) == frozenset()
