"""Training throughput and memory per architecture, beside the sparse-step bound measured in the
same run, and (with --peers) EleutherAI sparsify on the same rows.

    python scripts/bench_train.py                         # CPU, random rows, about 4 minutes
    python scripts/bench_train.py --activations train.npy --tokens 500000 --threads 2 --peers
    python scripts/bench_train.py --archs topk --peers --pairs 5 ...   # median of 5 ratios
    python scripts/bench_train.py --device cuda --tokens 20000000 --autocast true
    python scripts/bench_train.py --device cuda --archs topk --d-in 4096 --d-sae 65536 --k 64 \
        --batch 8192 --tokens 4000000 --grid        # issue 11 item 7: fp32/bf16 x compile, MFU

"steady" is the loop's rate over its second half; "bare step" is the median time of the
trainer's own step (`Trainer._step`: forward, backward, clipping, Adam, decoder norm, dead-latent
counters) on one batch held in memory; "data path" is how much longer a steady step of the loop
takes than the bare step: the cost of the store, the shuffle and the batch scaling.

Each architecture trains in a fresh subprocess through the real `sae train` code path
(Trainer.fit on a [tokens, d_in] .npy: the file given, or random activations of --d-in columns;
d_sae 3072, batch 4096, k 32 unless set; store, schedules, dead-latent tracking and Adam
included). `--autocast` is the trainer's own setting, `auto` by default (bf16 autocast where the
device multiplies bf16 natively); the header names what it resolved to and a row's name ends in
"bf16" when it was on. `--grid` runs each architecture four times: float32 and bf16 autocast,
each with and without torch.compile. Tokens/s is the trainer's
own figure from metrics.jsonl (the loop only, after start-up). Peak RSS is the subprocess's
ru_maxrss (GPU: torch.cuda.max_memory_allocated). `scripts/make_bench_acts.py` makes a MiniLM
file.

The bound. TopK family: one step needs at least the encoder GEMM ([B, d_in] x [d_in, d_sae])
and a top-k over [B, d_sae]; with the sparse backward everything else is O(B k d_in). The bound
is B / (best-of-10 time of that addmm + topk), measured here with the worker's thread count.
relu/jumprelu: their backward needs the dense weight gradients too, so their floor is the
fewest FLOPs (encoder forward + weight gradient 4·d·S, decoder forward + both gradients 6·S·d)
at the measured matmul rate. "of bound" = bound time / measured time. On CUDA, "MFU" is the
bare step's rate times those FLOPs per token (TopK family 2·d·S + 6·k·d, dense 10·d·S) over the
GPU's peak dense rate for the dtype (--peak-tflops, else a table of known GPUs).

--peers: where `eai-sparsify` is installed, its `SparseCoder` trains on the same rows in the
same order (same batch, threads, step count; its forward with AuxK, gradient projection, Adam
at its default LR 2e-4/sqrt(d_sae/2^14), unit-norm decoder, dead tracking as its trainer does
them), timed the same way (loop only, data read included), and the ratio is printed. This VM's
speed drifts by 10-20% between runs a minute apart, so `--pairs N` runs N topk/sparsify pairs
(alternating which goes first) and prints each ratio and their median.
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

from sae.config.hardware import native_bf16

ARCHS = ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"]
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0)}
"""Dense float32 (no TF32) and bf16 tensor-core peaks of SXM parts, NVIDIA's data sheets."""

WORKER = r"""
import json, resource, sys, time, torch
arch, path, tokens, out, device, autocast, threads, d_sae, k, B, comp = sys.argv[1:12]
d_sae, k, B = int(d_sae), int(k), int(B)
autocast = {"auto": "auto", "1": True, "0": False}[autocast]
torch.set_num_threads(int(threads))
from sae.config.schema import StoreConfig, TrainConfig, ModelConfig
from sae.model.sae import SAEConfig
extra = {"matryoshka_prefixes": [d_sae // 8, d_sae // 2, d_sae]} if arch == "matryoshka" else {}
cfg = TrainConfig(
    activations=path, total_tokens=int(tokens), eval_tokens=B, out=out, quiet=True,
    model=ModelConfig(device=device), autocast=autocast, compile=comp == "1",
    store=StoreConfig(buffer_tokens=max(65536, 4 * B), batch_size=B, normalize=True),
    sae=SAEConfig(architecture=arch, d_sae=d_sae, k=k, **extra),
)
from sae.training.train import Trainer
import dataclasses
done = Trainer(cfg)
done.fit()
recs = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
# Steady state: the loop's rate over its second half (each record's time is tokens / rate).
mid, last = recs[len(recs) // 2], recs[-1]
t_mid, t_last = mid["tokens"] / mid["tokens_per_s"], last["tokens"] / last["tokens_per_s"]
steady = (last["tokens"] - mid["tokens"]) / (t_last - t_mid)
# The bare step: the trainer's own _step on one batch held in memory, no store, no data path,
# from the trained state (weights, Adam moments, and the dead latents, hence AuxK's work, as
# the run left them; the dead-latent counter is restored before each repeat).
tr = Trainer(dataclasses.replace(cfg, out=out + "-bare"))
tr.step = 1  # no data initialisation: the trained tensors are loaded below
batch = next(tr.batches())
m, end = tr.members[0], done.members[0]
m.load_tensors({k: v.clone() for k, v in end.tensors().items()}, 0)
times = []
for i in range(12):
    m.tokens_since_fired.copy_(end.tokens_since_fired)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync(); t = time.perf_counter(); tr._step(m, batch, 1.0, 1.0); sync()
    times.append(time.perf_counter() - t)
bare = B / sorted(times[2:])[len(times[2:]) // 2]
print(json.dumps({"tokens_per_s": last["tokens_per_s"], "steady": steady, "bare": bare, "peak_gb": mem, "autocast": done.tcfg.autocast}))
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


def bounds(device: str, d_in: int, d_sae: int, k: int, B: int) -> tuple[float, float, float]:
    """(sparse-step bound in tokens/s, dense floor in tokens/s, fp32 matmul FLOP/s)."""
    x = torch.randn(B, d_in, device=device)
    W = torch.randn(d_in, d_sae, device=device)
    b = torch.randn(d_sae, device=device)
    t_mm = _best(lambda: torch.addmm(b, x, W), device)
    pre = torch.addmm(b, x, W)
    t_topk = _best(lambda: pre.topk(k, dim=-1, sorted=False), device)
    rate = 2 * B * d_in * d_sae / t_mm
    dense_floor = rate / flops_per_token("relu", d_in, d_sae, k)
    return B / (t_mm + t_topk), dense_floor, rate


def flops_per_token(arch: str, d_in: int, d_sae: int, k: int) -> float:
    """The step's least FLOPs per token: the encoder GEMM plus O(k d) sparse work for the TopK
    family; encoder and decoder forward and weight gradients (4 d S + 6 S d) for dense codes."""
    if arch in TOPK_FAMILY:
        return 2 * d_in * d_sae + 6 * k * d_in
    return 10 * d_in * d_sae


def peak_flops(args, bf16: bool) -> float | None:
    """The device's peak dense FLOP/s for the dtype: --peak-tflops, else PEAK_TFLOPS by name."""
    if not args.device.startswith("cuda"):
        return None
    pair = args.peak_tflops
    if pair is None:
        name = torch.cuda.get_device_name(torch.device(args.device))
        pair = next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
    return None if pair is None else pair[1 if bf16 else 0] * 1e12


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=600_000, help="training tokens per architecture")
    p.add_argument("--activations", help="a [rows, d_in] float32 .npy (default: random rows)")
    p.add_argument("--d-in", type=int, default=384, help="columns of the random rows")
    p.add_argument("--d-sae", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--autocast",
        choices=["auto", "true", "false"],
        default="auto",
        help="bf16 autocast of the SAE step, as `sae train --autocast` (default: auto)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the step (--compile)")
    p.add_argument("--grid", action="store_true", help="fp32 and autocast, each +/- compile")
    p.add_argument("--peak-tflops", type=float, nargs=2, metavar=("FP32", "BF16"), default=None)
    p.add_argument("--peers", action="store_true", help="also train eai-sparsify (if installed)")
    p.add_argument(
        "--pairs", type=int, default=1, help="with --peers: topk/sparsify pairs, median ratio"
    )
    p.add_argument("--archs", nargs="+", default=ARCHS)
    args = p.parse_args()
    if args.pairs < 1:
        p.error(f"--pairs {args.pairs}: give at least 1 topk/sparsify pair")
    torch.set_num_threads(args.threads)
    S, K, B = args.d_sae, args.k, args.batch
    modes = (
        [(ac, co) for ac in ("false", "true") for co in (False, True)]
        if args.grid
        else [(args.autocast, args.compile)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = args.activations
        if path is None:
            rng = np.random.default_rng(0)
            path = f"{tmp}/acts.npy"
            rows = max(4 * B, min(200_000, 2**28 // args.d_in))  # at most 1 GiB
            np.save(path, rng.standard_normal((rows, args.d_in), dtype=np.float32) + 1.0)
        d_in = int(np.load(path, mmap_mode="r").shape[1])
        sparse_bound, dense_floor, rate = bounds(args.device, d_in, S, K, B)
        print(
            f"device {args.device}, torch {torch.__version__}, {args.threads} threads; fp32 "
            f"addmm {rate / 1e9:.1f} GFLOP/s; sparse-step bound {sparse_bound:,.0f} tokens/s"
        )
        print(f"d_in {d_in}, d_sae {S}, k {K}, batch {B}, {args.tokens} tokens each")
        choice = args.autocast
        if args.grid:
            choice = "false and true (--grid)"
        elif choice == "auto":
            native = native_bf16(args.device)
            choice = f"auto: {'on' if native else 'off'} (bf16 {'native' if native else 'emulated'} on {args.device})"
        print(f"SAE step autocast: {choice}\n")
        print(
            f"{'arch':22s} {'tokens/s':>10s} {'bound tok/s':>11s} {'of bound':>8s} "
            f"{'peak mem':>9s} {'steady':>8s} {'bare step':>9s} {'data path':>9s} {'MFU':>6s}"
        )

        def worker(arch: str, autocast: str, comp: bool, tag: str = "") -> dict:
            out = f"{tmp}/{arch}-{autocast}{int(comp)}{tag}"
            flag = {"auto": "auto", "true": "1", "false": "0"}[autocast]
            flags = [flag, str(args.threads), str(S), str(K), str(B)]
            return _run(
                [WORKER, arch, path, str(args.tokens), out, args.device, *flags]
                + ["1" if comp else "0"]
            )

        ours = {}
        for arch in args.archs:
            for autocast, comp in modes:
                r = worker(arch, autocast, comp)
                if "error" in r:
                    print(f"{arch:22s} failed: {r['error']}")
                    continue
                name = arch + (" bf16" if r["autocast"] else "") + (" compile" if comp else "")
                ours.setdefault(arch, r)
                bound = sparse_bound if arch in TOPK_FAMILY else dense_floor
                peak = peak_flops(args, r["autocast"])
                mfu = (
                    f"{r['bare'] * flops_per_token(arch, d_in, S, K) / peak:6.1%}"
                    if peak
                    else f"{'-':>6s}"
                )
                print(
                    f"{name:22s} {r['tokens_per_s']:10,.0f} {bound:11,.0f} "
                    f"{r['tokens_per_s'] / bound:8.1%} {r['peak_gb']:6.2f} GB {r['steady']:8,.0f} "
                    f"{r['bare']:9,.0f} {r['bare'] / r['steady'] - 1:+9.1%} {mfu}",
                    flush=True,
                )
        if args.peers:
            try:
                import sparsify  # noqa: F401
            except ImportError:
                print("\n--peers: eai-sparsify is not installed; skipped")
                return
            if (S, K, B) != (3072, 32, 4096):
                print("\n--peers: the peer runs d_sae 3072, k 32, batch 4096 only; skipped")
                return

            def peer() -> dict:
                return _run([PEER, path, str(args.tokens), str(args.threads)])

            r = peer()
            if "error" in r:
                print(f"sparsify    failed: {r['error']}")
                return
            print(
                f"{'sparsify':22s} {r['tokens_per_s']:10,.0f} {'':11s} {'':8s} {r['peak_gb']:6.2f} GB"
            )
            if "topk" not in ours:
                return
            pairs = [(ours["topk"]["tokens_per_s"], r["tokens_per_s"])]
            for i in range(1, args.pairs):  # more pairs, alternating which of the two runs first
                if i % 2 == 1:  # sparsify first
                    p = peer()
                    o = worker("topk", args.autocast, args.compile, f"-{i}")
                else:
                    o = worker("topk", args.autocast, args.compile, f"-{i}")
                    p = peer()
                if "error" in o or "error" in p:
                    print(f"pair {i + 1} failed: {o.get('error') or p.get('error')}")
                    continue
                pairs.append((o["tokens_per_s"], p["tokens_per_s"]))
            ratios = [a / b for a, b in pairs]
            if len(pairs) > 1:
                print()
                for i, (a, b) in enumerate(pairs):
                    print(f"pair {i + 1}: topk {a:,.0f}, sparsify {b:,.0f} tokens/s: {a / b:.2f}x")
            ours_name = "topk" + (" bf16" if ours["topk"]["autocast"] else "")
            print(
                f"\n{ours_name} / sparsify (float32): {float(np.median(ratios)):.2f}x"
                + (f" (median of {len(ratios)} pairs)" if len(ratios) > 1 else "")
            )


def _run(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", *argv], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
