"""Training throughput and memory per architecture at the default shape, beside a FLOP floor.

    python scripts/bench_train.py                         # CPU, about 4 minutes on 2 cores
    python scripts/bench_train.py --device cuda --tokens 20000000 --autocast

Each architecture trains in a fresh subprocess through the real `sae train` code path
(Trainer.fit on a [tokens, 384] .npy file of random activations, d_sae 3072, batch 4096, k 32;
store, schedules, dead-latent tracking and Adam included). Tokens/s is the trainer's own
figure from metrics.jsonl (the loop only, after start-up). Peak RSS is the subprocess's ru_maxrss
(GPU: torch.cuda.max_memory_allocated).

The floor: the fewest multiply-adds one step needs, at the matmul rate measured here in the same
run (best of 10 fp32 [4096, 384] x [384, 3072] products). Encoder: forward plus weight gradient,
4·B·d·S FLOPs. Decoder: TopK-family decoders touch only k rows per token, 6·B·k·d; dense
decoders (relu, jumprelu) 6·B·S·d (forward, weight gradient, input gradient). "of floor" =
floor time / measured time: 100% would mean nothing but the essential matmuls at full speed.
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
D_IN, D_SAE, K, BATCH = 384, 3072, 32, 4096

WORKER = r"""
import json, resource, sys, torch
from sae.config import StoreConfig, TrainConfig, ModelConfig
from sae.sae import SAEConfig
from sae.training.train import train
arch, path, tokens, out, device, autocast = sys.argv[1:7]
extra = {"matryoshka_prefixes": [384, 1536, 3072]} if arch == "matryoshka" else {}
cfg = TrainConfig(
    activations=path, total_tokens=int(tokens), eval_tokens=4096, out=out, quiet=True,
    model=ModelConfig(device=device), autocast=autocast == "1",
    store=StoreConfig(buffer_tokens=65536, batch_size=4096, normalize=True),
    sae=SAEConfig(architecture=arch, d_sae=3072, k=32, **extra),
)
train(cfg)
rates = [json.loads(l)["tokens_per_s"] for l in open(f"{out}/metrics.jsonl")]
mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"tokens_per_s": rates[-1], "peak_gb": mem}))
"""


def matmul_rate(device: str) -> float:
    a = torch.randn(BATCH, D_IN, device=device)
    b = torch.randn(D_IN, D_SAE, device=device)
    best = float("inf")
    for _ in range(10):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * BATCH * D_IN * D_SAE / best


def floor_flops_per_token(arch: str) -> float:
    encoder = 4 * D_IN * D_SAE
    decoder = 6 * K * D_IN if arch in ("topk", "batchtopk", "matryoshka") else 6 * D_SAE * D_IN
    return encoder + decoder


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=600_000, help="training tokens per architecture")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", action="store_true")
    p.add_argument("--archs", nargs="+", default=ARCHS)
    args = p.parse_args()
    rate = matmul_rate(args.device)
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"fp32 matmul rate {rate / 1e9:.1f} GFLOP/s ([{BATCH},{D_IN}]x[{D_IN},{D_SAE}], best of 10)"
    )
    print(f"shape d_in {D_IN}, d_sae {D_SAE}, k {K}, batch {BATCH}, {args.tokens} tokens each\n")
    print(
        f"{'arch':11s} {'tokens/s':>10s} {'floor tok/s':>11s} {'of floor':>8s} {'peak mem GB':>11s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        acts = rng.standard_normal((200_000, D_IN), dtype=np.float32) + 1.0
        np.save(f"{tmp}/acts.npy", acts)
        for arch in args.archs:
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    WORKER,
                    arch,
                    f"{tmp}/acts.npy",
                    str(args.tokens),
                    f"{tmp}/{arch}",
                    args.device,
                    "1" if args.autocast else "0",
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                print(f"{arch:11s} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            floor = rate / floor_flops_per_token(arch)
            print(
                f"{arch:11s} {r['tokens_per_s']:10,.0f} {floor:11,.0f} {r['tokens_per_s'] / floor:8.1%} "
                f"{r['peak_gb']:11.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
