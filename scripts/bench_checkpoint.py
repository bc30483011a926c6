"""Cost of one periodic checkpoint (SAELens folder + Adam state + manifest with sha256 + fsync)
as a fraction of the CHECKPOINT_SECONDS between two of them.

    python scripts/bench_checkpoint.py                   # default SAE and a GPT-2-small-sized one
    python scripts/bench_checkpoint.py --sizes 384x3072 4096x65536
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sae.config.schema import CHECKPOINT_SECONDS
from sae.model.sae import SAEConfig
from sae.training.checkpoint import write_checkpoint
from sae.training.members import Member


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="*", default=["384x3072", "768x24576"], help="d_in x d_sae")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    for size in a.sizes:
        d_in, d_sae = map(int, size.split("x"))
        m = Member("m", SAEConfig(d_in=d_in, d_sae=d_sae, k=32), "h", None, 1e-3, "cpu")
        x = torch.randn(256, d_in)
        from sae.model.step import training_forward

        training_forward(m.sae, x).loss.backward()
        m.opt.step()  # Adam moments exist, as in a real checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            run, times = Path(tmp), []
            for i in range(a.repeats):
                parts = {
                    "store_state": {"ranks": [{}]},
                    "trainer": {"step": i},
                    "saes": {"m": (lambda f, m=m: m.save(f, {}, {}), m.tensors())},
                }
                t0 = time.perf_counter()
                write_checkpoint(run, 1000 * (i + 1), parts)
                times.append(time.perf_counter() - t0)
            size_mb = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 2 / 1e6
        t = statistics.median(times)
        print(
            f"{size:>12s}: {size_mb:7.1f} MB per checkpoint, {t:6.2f} s to write "
            f"= {100 * t / CHECKPOINT_SECONDS:.3f}% of {CHECKPOINT_SECONDS} s"
        )


if __name__ == "__main__":
    main()
