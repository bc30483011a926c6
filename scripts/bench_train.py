"""Training throughput and memory per architecture, beside the sparse-step bound measured in the
same run, and (with --peers) EleutherAI sparsify on the same rows.

    python scripts/bench_train.py                         # CPU, random rows, about 4 minutes
    python scripts/bench_train.py --activations train.npy --tokens 500000 --threads 2 --peers
    python scripts/bench_train.py --device cuda --tokens 20000000 --autocast

"steady" is the loop's rate over its second half; "bare step" is the median time of the
trainer's own step (`Trainer._step`: forward, backward, clipping, Adam, decoder norm, dead-latent
counters) on one batch held in memory; "data path" is how much longer a steady step of the loop
takes than the bare step: the cost of the store, the shuffle and the batch scaling.

Each architecture trains in a fresh subprocess through the real `sae train` code path
(Trainer.fit on a [tokens, d_in] .npy: the file given, or random activations; d_sae 3072, batch
4096, k 32; store, schedules, dead-latent tracking and Adam included). Tokens/s is the trainer's
own figure from metrics.jsonl (the loop only, after start-up). Peak RSS is the subprocess's
ru_maxrss (GPU: torch.cuda.max_memory_allocated). `scripts/make_bench_acts.py` makes a MiniLM
file.

The bound. TopK family: one step needs at least the encoder GEMM ([B, d_in] x [d_in, d_sae])
and a top-k over [B, d_sae]; with the sparse backward everything else is O(B k d_in). The bound
is B / (best-of-10 time of that addmm + topk), measured here with the worker's thread count.
relu/jumprelu: their backward needs the dense weight gradients too, so their floor is the
fewest FLOPs (encoder forward + weight gradient 4·d·S, decoder forward + both gradients 6·S·d)
at the measured matmul rate. "of bound" = bound time / measured time.

--peers: where `eai-sparsify` is installed, its `SparseCoder` trains on the same rows in the
same order (same batch, threads, step count; its forward with AuxK, gradient projection, Adam
at its default LR 2e-4/sqrt(d_sae/2^14), unit-norm decoder, dead tracking as its trainer does
them), timed the same way (loop only, data read included), and the ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ARCHS = ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"]
D_SAE, K, BATCH = 3072, 32, 4096
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")

WORKER = r"""
import json, resource, sys, time, torch
arch, path, tokens, out, device, autocast, threads = sys.argv[1:8]
torch.set_num_threads(int(threads))
from sae.config import StoreConfig, TrainConfig, ModelConfig
from sae.sae import SAEConfig
from sae.training.train import train
extra = {"matryoshka_prefixes": [384, 1536, 3072]} if arch == "matryoshka" else {}
cfg = TrainConfig(
    activations=path, total_tokens=int(tokens), eval_tokens=4096, out=out, quiet=True,
    model=ModelConfig(device=device), autocast=autocast == "1",
    store=StoreConfig(buffer_tokens=65536, batch_size=4096, normalize=True),
    sae=SAEConfig(architecture=arch, d_sae=3072, k=32, **extra),
)
train(cfg)
recs = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
# Steady state: the loop's rate over its second half (each record's time is tokens / rate).
mid, last = recs[len(recs) // 2], recs[-1]
t_mid, t_last = mid["tokens"] / mid["tokens_per_s"], last["tokens"] / last["tokens_per_s"]
steady = (last["tokens"] - mid["tokens"]) / (t_last - t_mid)
# The bare step: the trainer's own _step on one batch held in memory, no store, no data path.
from sae.training.train import Trainer
import dataclasses
tr = Trainer(dataclasses.replace(cfg, out=out + "-bare"))
batch = next(tr.batches())
m = tr.members[0]
times = []
for i in range(12):
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync(); t = time.perf_counter(); tr._step(m, batch, 1.0, 1.0); sync()
    times.append(time.perf_counter() - t)
bare = 4096 / sorted(times[2:])[len(times[2:]) // 2]
print(json.dumps({"tokens_per_s": last["tokens_per_s"], "steady": steady, "bare": bare, "peak_gb": mem}))
"""

PEER = r"""
import json, resource, sys, time, numpy as np, torch
path, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
from sparsify import SparseCoder, SparseCoderConfig
acts = np.load(path, mmap_mode="r")
B, S, K = 4096, 3072, 32
torch.manual_seed(0)
sae = SparseCoder(acts.shape[1], SparseCoderConfig(num_latents=S, k=K))
opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (S / 2**14) ** 0.5)
since_fired = torch.zeros(S, dtype=torch.long)
steps = tokens // B
scale = None
t0 = time.perf_counter()
for step in range(steps):
    i = (step * B) % (len(acts) - B)
    x = torch.from_numpy(np.ascontiguousarray(acts[i : i + B]))
    if scale is None:  # unit mean squared norm, as our store does
        scale = float(x.pow(2).sum(-1).mean().rsqrt())
        sae.b_dec.data = (x * scale).mean(0)
    x = x * scale
    dead = since_fired > 10_000_000
    out = sae(x, dead_mask=dead)
    (out.fvu + out.auxk_loss / 32).backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step(); opt.zero_grad()
    sae.set_decoder_norm_to_unit_norm()
    since_fired += B
    since_fired[out.latent_indices.flatten()] = 0
rate = steps * B / (time.perf_counter() - t0)
print(json.dumps({"tokens_per_s": rate, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _best(fn, device: str, n: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def bounds(device: str, d_in: int) -> tuple[float, float, float]:
    """(sparse-step bound in tokens/s, dense floor in tokens/s, fp32 matmul FLOP/s)."""
    x = torch.randn(BATCH, d_in, device=device)
    W = torch.randn(d_in, D_SAE, device=device)
    b = torch.randn(D_SAE, device=device)
    t_mm = _best(lambda: torch.addmm(b, x, W), device)
    pre = torch.addmm(b, x, W)
    t_topk = _best(lambda: pre.topk(K, dim=-1, sorted=False), device)
    rate = 2 * BATCH * d_in * D_SAE / t_mm
    dense_floor = rate / (4 * d_in * D_SAE + 6 * D_SAE * d_in)
    return BATCH / (t_mm + t_topk), dense_floor, rate


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=600_000, help="training tokens per architecture")
    p.add_argument("--activations", help="a [rows, d_in] float32 .npy (default: random rows)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", action="store_true")
    p.add_argument("--peers", action="store_true", help="also train eai-sparsify (if installed)")
    p.add_argument("--archs", nargs="+", default=ARCHS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.activations
        if path is None:
            rng = np.random.default_rng(0)
            path = f"{tmp}/acts.npy"
            np.save(path, rng.standard_normal((200_000, 384), dtype=np.float32) + 1.0)
        d_in = int(np.load(path, mmap_mode="r").shape[1])
        sparse_bound, dense_floor, rate = bounds(args.device, d_in)
        print(
            f"device {args.device}, torch {torch.__version__}, {args.threads} threads; fp32 "
            f"addmm {rate / 1e9:.1f} GFLOP/s; sparse-step bound {sparse_bound:,.0f} tokens/s"
        )
        print(f"d_in {d_in}, d_sae {D_SAE}, k {K}, batch {BATCH}, {args.tokens} tokens each\n")
        print(
            f"{'arch':11s} {'tokens/s':>10s} {'bound tok/s':>11s} {'of bound':>8s} {'peak RSS':>9s}"
            f" {'steady':>8s} {'bare step':>9s} {'data path':>9s}"
        )
        ours = {}
        for arch in args.archs:
            r = _run(
                [
                    WORKER,
                    arch,
                    path,
                    str(args.tokens),
                    f"{tmp}/{arch}",
                    args.device,
                    "1" if args.autocast else "0",
                    str(args.threads),
                ]
            )
            if "error" in r:
                print(f"{arch:11s} failed: {r['error']}")
                continue
            ours[arch] = r
            bound = sparse_bound if arch in TOPK_FAMILY else dense_floor
            print(
                f"{arch:11s} {r['tokens_per_s']:10,.0f} {bound:11,.0f} "
                f"{r['tokens_per_s'] / bound:8.1%} {r['peak_gb']:7.2f} GB {r['steady']:8,.0f} "
                f"{r['bare']:9,.0f} {r['bare'] / r['steady'] - 1:+9.1%}",
                flush=True,
            )
        if args.peers:
            try:
                import sparsify  # noqa: F401
            except ImportError:
                print("\n--peers: eai-sparsify is not installed; skipped")
                return
            r = _run([PEER, path, str(args.tokens), str(args.threads)])
            if "error" in r:
                print(f"sparsify    failed: {r['error']}")
                return
            print(
                f"{'sparsify':11s} {r['tokens_per_s']:10,.0f} {'':11s} {'':8s} {r['peak_gb']:7.2f} GB"
            )
            if "topk" in ours:
                print(f"\ntopk / sparsify: {ours['topk']['tokens_per_s'] / r['tokens_per_s']:.2f}x")


def _run(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", *argv], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
