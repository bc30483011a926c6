"""Evaluation mathematics (../shared/MATH.md): pure functions on tensors, no I/O."""
