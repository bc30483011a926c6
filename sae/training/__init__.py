"""Stage 2 — training SAEs on activation batches.

train.py (the loop) · members.py (the run's SAEs, their optimizers and schedule) ·
checkpoint.py (checkpoint folders, resume) · heldout.py (held-out scoring at the end of a run) · runlog.py (metrics.jsonl, wandb, progress bar).
"""
