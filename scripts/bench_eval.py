"""Time `sae eval --suite core` on one SAE folder over N held-out tokens, and say how.

    python scripts/bench_eval.py checkpoints/default/final/resid_post.3-topk-3072-k32
    python scripts/bench_eval.py SAE_DIR --tokens 100000 --threads 2          # CPU, 2 threads
    python scripts/bench_eval.py SAE_DIR --device cuda --batch-windows 64     # GPU

Measures the whole command as a user runs it (model load, tokenising the held-out windows, clean
and spliced forward passes, SAE, bootstrap, plots, report), wall-clock and process CPU time,
and prints the per-phase split that the report records (report.json `timings_s`).
Target (issue 4): the default MiniLM SAE over 100k held-out tokens in under 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from sae.eval import EvalConfig, run_eval
from sae.io.records import Report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sae_dir", help="SAE folder (trained by `sae train`, or any with metadata)")
    p.add_argument("--tokens", type=int, default=100_000, help="held-out tokens to score")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.add_argument("--batch-windows", type=int, default=16, help="windows per forward pass")
    p.add_argument("--out", default=None, help="report folder (default: a temporary folder)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="bench_eval_")
    cfg = EvalConfig(
        [args.sae_dir],
        suite="core",
        eval_tokens=args.tokens,
        n_boot=args.n_boot,
        device=args.device,
        batch_windows=args.batch_windows,
        out=out,
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    folder = run_eval(cfg)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    report = Report.read(folder)
    entry = report.saes[0]
    core = entry.results["core"]
    rec, ds = core["reconstruction"], core["downstream"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"what: core suite on {args.sae_dir}\n      model {entry.model}, hook "
        f"{entry.hook}, {core['tokens']:,} held-out tokens in "
        f"{core['windows']} windows, {args.n_boot} bootstrap resamples, device {args.device}"
    )
    print(f"wall: {wall:.1f} s ({core['tokens'] / wall:,.0f} tokens/s); process CPU: {cpu:.1f} s")
    for phase, seconds in report.timings_s.items():
        print(f"  {phase:40s} {seconds:8.1f} s")
    line = f"fvu {rec['fvu']['value']:.4f} {rec['fvu']['ci95']}, l0 {rec['l0']['value']:.1f}"
    for name, m in (ds.get("metrics") or {}).items():
        line += f", {name} {m['value']:.4f}"
    print(line)
    print(f"report: {folder}")


if __name__ == "__main__":
    main()
