"""What the hardware multiplies natively: the `model.dtype: auto` rule.

A model forward in bfloat16 is fast only where the hardware has bfloat16 matrix units: NVIDIA
GPUs of compute capability 8.0 (Ampere) and later, and x86 CPUs with AVX512-BF16 or AMX-BF16.
Elsewhere bfloat16 is emulated and slower than float32 (4x slower on an AVX2 CPU: BENCHMARKS.md,
"bf16 model forward"), so `auto` chooses float32 there. The accuracy cost of a bfloat16 forward
is measured in the same section (relative error 9e-5 of the activations' variance; the trained
SAE's FVU moves by 1e-4).
"""

from __future__ import annotations

import functools
import platform

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of an x86 CPU with native bfloat16 dot products."""


def read_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first `flags` line of a cpuinfo file (x86 Linux); empty when there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags; empty off Linux."""
    return read_flags() if platform.system() == "Linux" else frozenset()


def native_bf16(device: str) -> bool:
    """True when `device` ('auto', 'cpu', 'cuda', 'cuda:1', ...) multiplies bfloat16 natively."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cpu":
        return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)
    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    return False


def auto_dtype(device: str) -> str:
    """The model dtype `auto` stands for on `device`."""
    return "bfloat16" if native_bf16(device) else "float32"
