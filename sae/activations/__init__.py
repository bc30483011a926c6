"""Stage 1 — text to activation batches.

text.py (documents → token windows) → capture.py (HF model, hooks, early exit) → sources.py
(live model, activation cache, matrix file, synthetic) → store.py (bounded shuffle buffer with
exact resume); harvest.py writes an activation cache for later runs.
"""
