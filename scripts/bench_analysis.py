"""Time and peak memory of the analysis suites at scale (issue 5), each measurement in its own process:
the capacity of a 65,536 × 4,096 dictionary, and the redundancy suite's accumulation and records over
1M tokens at d = 4,096.

    python scripts/bench_analysis.py --threads 2            # full size: ~28 min on 2 cores (*)
    python scripts/bench_analysis.py --small                # m 4,096, d 256, 20k tokens: a smoke run
    python scripts/bench_analysis.py --only capacity --m 65536 --d 4096 --threads 2

Random data, no model and no SAE forward pass (say so beside the numbers):
- capacity: W_dec [m, d] with random unit rows and random usage E[a²]; `capacity_summary` exactly as
  the capacity suite calls it (geometric + usage-weighted views, neuron index; the block search is
  skipped above `sae.eval.capacity.BLOCK_FLOPS`, as in the suite). O(m d²) time, O(d²) working
  memory beside W itself.
- redundancy: rows x ~ N(0, diag(k^−1)) (a power-law spectrum without a rotation), x_hat = 0.9 x,
  dense latents [batch, d_sae] with `k` random nonzeros per row, all fed to the suite's own
  accumulator (`sae.eval.redundancy._Stream`: fp64 covariances of x, x_hat, error, the sparse
  latent rows, usage), then the suite's records (eigh, fit, bootstrap where its memory budget
  allows, the latent spectrum, spectral fidelity). Time O(n d²) per dense code; memory O(d²) per
  code plus the sparse latents, O(n·k).
Each row reports wall time, the phases, and the peak resident memory of its process (ru_maxrss)
next to the memory of its inputs (the dictionary, or nothing).

(*) the measured times are in BENCHMARKS.md, 'Analysis suites at scale'. Run it alone: a concurrent
job makes the OpenMP threads spin-wait and the timings 2-4x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def capacity_worker(args) -> dict:
    from sae.analysis.capacity import capacity_summary
    from sae.eval.capacity import blocks_ok

    g = torch.Generator().manual_seed(0)
    W = torch.empty(args.m, args.d)
    for s in range(0, args.m, 8192):  # fill in chunks: no full-size temporaries
        W[s : s + 8192] = torch.nn.functional.normalize(
            torch.randn(min(8192, args.m - s), args.d, generator=g), dim=1
        )
    usage = torch.rand(args.m, generator=g, dtype=torch.float64) ** 4
    rss_inputs = _rss_mb()
    ok = args.blocks or blocks_ok(args.m, args.d)[0]
    t0 = time.perf_counter()
    out = capacity_summary(W, usage, torch.zeros(args.m, dtype=torch.bool), blocks=ok)
    secs = time.perf_counter() - t0
    return {
        "what": f"capacity, {args.m:,} x {args.d:,} dictionary (fp32), blocks {'on' if ok else 'skipped'}",
        "seconds": secs,
        "phases": {},
        "input_mb": args.m * args.d * 4 / 2**20,
        "rss_after_inputs_mb": rss_inputs,
        "peak_rss_mb": _rss_mb(),
        "check": f"sum C geometric {out['geometric']['sum_capacity']:.1f} vs null "
        f"{out['geometric']['null_sum_capacity']:.1f}"
        + (
            f"; {out['geometric']['blocks']['count']:,} blocks, largest "
            f"{out['geometric']['blocks']['largest'][0]['n']:,} features"
            if ok
            else ""
        ),
    }


def redundancy_worker(args) -> dict:
    import numpy as np

    from sae.analysis.spectrum import spectral_fidelity_from_stats
    from sae.eval import redundancy as red

    g = torch.Generator().manual_seed(0)
    scale_D = torch.arange(1, args.d + 1, dtype=torch.float32) ** -0.5
    n_boot = min(args.n_boot, red.BOOT_MAX)
    groups, why = red._groups(args.d, n_boot)
    stream = red._Stream(args.d, args.d_sae, groups)
    norm_M = torch.ones(args.d_sae)
    rss_inputs = _rss_mb()
    phases, t0 = {}, time.perf_counter()
    seen, b = 0, 0
    while seen < args.tokens:
        n = min(args.batch, args.tokens - seen)
        x = (torch.randn(n, args.d, generator=g) * scale_D).double()
        x_hat = 0.9 * x
        a = torch.zeros(n, args.d_sae)
        idx = torch.randint(args.d_sae, (n, args.k), generator=g)
        a.scatter_(1, idx, torch.rand(n, args.k, generator=g) + 0.1)
        window = (seen + torch.arange(n)) // 128
        stream.add({"x": x, "x_hat": x_hat, "error": x - x_hat}, a, norm_M, window)
        seen, b = seen + n, b + 1
    phases["accumulate (3 covariances + sparse latents)"] = (time.perf_counter() - t0, _rss_mb())
    t = time.perf_counter()
    recs, full = {}, {}
    for c in ("x", "x_hat", "error"):
        recs[c], full[c] = red._dense_record(stream.accs[c], n_boot, 0)
    phases["x, x_hat, error records (eigh, fit, bootstrap)"] = (time.perf_counter() - t, _rss_mb())
    t = time.perf_counter()
    live = (stream.fired_M > 0).numpy()
    group_N = np.concatenate(stream.group_rows)
    lat, method, _ = red._latent_record(stream.latents(live), group_N, n_boot, 0)
    phases[f"latents ({method})"] = (time.perf_counter() - t, _rss_mb())
    t = time.perf_counter()
    spectral_fidelity_from_stats(full["x"], full["x_hat"], full["error"])
    phases["spectral fidelity"] = (time.perf_counter() - t, _rss_mb())
    boot = [c for c, w in why.items() if w is None]
    return {
        "what": f"redundancy, {args.tokens:,} tokens, d {args.d:,}, d_sae {args.d_sae:,} "
        f"(k {args.k}); bootstrap on {boot or 'none'} ({n_boot} resamples)",
        "seconds": time.perf_counter() - t0,
        "phases": phases,
        "input_mb": 0.0,
        "rss_after_inputs_mb": rss_inputs,
        "peak_rss_mb": _rss_mb(),
        "check": f"alpha(x) {recs['x']['alpha']:.3f} (true 1.0), latents live {int(live.sum())}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", action="store_true", help="m 4096, d 256, 20k tokens, d_sae 8192")
    p.add_argument("--only", choices=["capacity", "redundancy"], default=None)
    p.add_argument("--m", type=int, default=65_536, help="capacity: dictionary size")
    p.add_argument("--d", type=int, default=4_096, help="width of both benchmarks")
    p.add_argument("--tokens", type=int, default=1_000_000, help="redundancy: rows")
    p.add_argument("--d-sae", type=int, default=16_384, help="redundancy: latents")
    p.add_argument("--k", type=int, default=32, help="redundancy: active latents per row")
    p.add_argument("--batch", type=int, default=4096, help="redundancy: rows per update")
    p.add_argument("--n-boot", type=int, default=100, help="redundancy: bootstrap resamples")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the workers")
    p.add_argument("--blocks", action="store_true",
                   help="capacity: run the block search even above BLOCK_FLOPS")  # fmt: skip
    p.add_argument("--worker", choices=["capacity", "redundancy"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.small:
        args.m, args.d, args.tokens, args.d_sae = 4096, 256, 20_000, 8192
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        fn = capacity_worker if args.worker == "capacity" else redundancy_worker
        print(json.dumps(fn(args)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads or torch.get_num_threads()} threads; random data")  # fmt: skip
    passthrough = [w for w in sys.argv[1:] if w != "--small"]
    if args.small:
        passthrough += ["--m", str(args.m), "--d", str(args.d), "--tokens", str(args.tokens),
                        "--d-sae", str(args.d_sae)]  # fmt: skip
    for worker in [args.only] if args.only else ["capacity", "redundancy"]:
        cmd = [sys.executable, __file__, *passthrough, "--worker", worker]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{worker}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"\n{r['what']}\n  wall {r['seconds']:.1f} s; peak RSS {r['peak_rss_mb']:,.0f} MB "
              f"(after inputs {r['rss_after_inputs_mb']:,.0f} MB, inputs {r['input_mb']:,.0f} MB); "
              f"{r['check']}")  # fmt: skip
        for phase, (secs, rss) in r["phases"].items():
            print(f"    {phase:55s} {secs:8.1f} s   peak RSS so far {rss:,.0f} MB")


if __name__ == "__main__":
    main()
