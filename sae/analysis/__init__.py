"""Evaluation mathematics (docs/methods.md): pure functions on tensors, no I/O."""
