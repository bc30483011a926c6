"""What the hardware multiplies natively: the `model.dtype: auto` and `autocast: auto` rule.

A model forward in bfloat16 is fast only where the hardware has bfloat16 matrix units: NVIDIA
GPUs of compute capability 8.0 (Ampere) and later, and x86 CPUs with AVX512-BF16 or AMX.
Elsewhere bfloat16 is emulated and slower than float32, so `auto` chooses float32 there. Both
the slowdown and the accuracy cost of a bfloat16 forward are measured in BENCHMARKS.md, 'Lower
precision (bf16): accuracy and speed'. The same probe turns on bf16 autocast of the SAE step
(`sae.training.checkpoint.resolve_autocast`).
"""

from __future__ import annotations

CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
"""torch.cpu's probes (cpuinfo, any OS) for native bfloat16 dot products on x86."""


def cpu_native_bf16() -> bool:
    """True when this CPU has AVX512-BF16 or AMX; False where torch cannot tell."""
    import torch.cpu

    probes = [getattr(torch.cpu, name, None) for name in CPU_BF16_CHECKS]
    return any(probe() for probe in probes if probe is not None)


def native_bf16(device: str) -> bool:
    """True when `device` ('auto', 'cpu', 'cuda', 'cuda:1', ...) multiplies bfloat16 natively."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cpu":
        return cpu_native_bf16()
    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    return False


def auto_dtype(device: str) -> str:
    """The model dtype `auto` stands for on `device`."""
    return "bfloat16" if native_bf16(device) else "float32"
