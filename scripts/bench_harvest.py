"""Harvest throughput and memory on the built-in default (MiniLM, resid_post.3, Python docs).

    python scripts/bench_harvest.py                       # CPU, about 3 minutes on 2 cores
    python scripts/bench_harvest.py --tokens 100000 400000 --device cuda

What it measures, each in a fresh subprocess (so peak RSS belongs to that job alone):
  bare      the model truncated to its first 4 layers (embeddings + encoder.layer.0-3), run on
            pre-tokenized windows: the floor any harvester pays.
  full      the whole 6-layer model on the same windows (what a harvester without early exit pays).
  harvest   `sae harvest` on the same number of windows: tokenizing, hooked forward with early
            exit, masking special tokens, writing fp32 shards + manifest (model loaded first,
            as for every row).
  store     ActivationStore over live activations (buffer 262,144 rows) on the same windows.
Tokens/s counts activation rows kept (special tokens excluded) for harvest/store, and all window
positions for the bare/full forwards. Peak RSS is ru_maxrss of the subprocess (it counts
file-backed pages such as the memory-mapped model weights); "anon" is the peak of RssAnon
sampled every 20 ms: the process's own heap, which is what grows with buffers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

WORKER = r"""
import json, resource, sys, threading, time, torch
peak_anon = [0.0]
def _sample():  # anonymous (non-file-backed) resident memory, sampled every 20 ms
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                peak_anon[0] = max(peak_anon[0], int(line.split()[1]) / 2**20)
        time.sleep(0.02)
threading.Thread(target=_sample, daemon=True).start()
from sae.config.schema import DataConfig, HarvestConfig, ModelConfig, StoreConfig
kind, n_windows, device, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(torch.get_num_threads())
data = DataConfig(max_windows=n_windows)
model_cfg = ModelConfig(device=device)
t0 = time.perf_counter()
if kind in ("bare", "full"):
    from sae.activations.text import TokenWindows
    from sae.activations.capture import load_model
    model, tok = load_model(model_cfg)
    windows = torch.stack([w for _, w in TokenWindows(data, tok)])
    if kind == "bare":
        model.encoder.layer = model.encoder.layer[:4]
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(windows), model_cfg.batch_windows):
            ids = windows[i : i + model_cfg.batch_windows].to(model.device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rows, seconds = windows.numel(), time.perf_counter() - start
elif kind == "harvest":
    from sae.activations.harvest import harvest
    from sae.activations.sources import LiveSource
    cfg = HarvestConfig(data=data, model=model_cfg, out=out, quiet=True)
    source = LiveSource(cfg.model, cfg.data, cfg.store)  # model loaded before the clock starts
    start = time.perf_counter()
    path = harvest(cfg, source=source)
    rows, seconds = json.load(open(f"{path}/manifest.json"))["n_tokens"], time.perf_counter() - start
elif kind == "store":
    from sae.activations.sources import LiveSource
    from sae.activations.store import ActivationStore
    cfg = StoreConfig()
    store = ActivationStore(LiveSource(model_cfg, data, cfg), cfg)
    start = time.perf_counter()
    rows = sum(len(b["resid_post.3"]) for b in store)
    seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"kind": kind, "rows": rows, "seconds": seconds, "peak_rss_gb": rss, "peak_anon_gb": peak_anon[0]}))
"""


def run(kind: str, windows: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", WORKER, kind, str(windows), device, f"{tmp}/cache"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tokens", type=int, nargs=2, default=[100_000, 400_000], help="two harvest sizes"
    )
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    ctx = 128
    print(
        f"machine: {resource.getpagesize()}-byte pages, python {sys.version.split()[0]}, device {args.device}"
    )
    rows = []
    for tokens in args.tokens:
        windows = tokens // ctx
        for kind in ("bare", "full", "harvest", "store"):
            t = time.perf_counter()
            r = run(kind, windows, args.device)
            r["tokens_per_s"] = r["rows"] / r["seconds"]
            r["windows"] = windows
            rows.append(r)
            print(
                f"{windows:6d} windows  {kind:8s} {r['rows']:9d} rows  {r['seconds']:7.2f} s  "
                f"{r['tokens_per_s']:9.0f} tok/s  peak RSS {r['peak_rss_gb']:.2f} GB (anon {r['peak_anon_gb']:.2f})  "
                f"(wall incl. start-up {time.perf_counter() - t:.1f} s)",
                flush=True,
            )
    print("\nper size: harvest time vs bare truncated forward (same windows)")
    for tokens in args.tokens:
        by = {r["kind"]: r for r in rows if r["windows"] == tokens // ctx}
        over_h = by["harvest"]["seconds"] / by["bare"]["seconds"] - 1
        over_s = by["store"]["seconds"] / by["bare"]["seconds"] - 1
        print(
            f"{tokens // ctx} windows: harvest overhead {over_h:+.1%}, store overhead {over_s:+.1%}, "
            f"full/bare forward time {by['full']['seconds'] / by['bare']['seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
