"""Time the records pass, the dashboard and the Neuronpedia export of one SAE; report peak memory.

    python scripts/bench_export.py --sae checkpoints/default/final/resid_post.3-topk-3072-k32
    python scripts/bench_export.py --sae SAE_DIR --tokens 100000 --threads 2 --out /tmp/bench_export
    python scripts/bench_export.py --sae SAE_DIR --device cuda --batch-windows 64   # GPU

Prints one JSON line: seconds per phase, tokens, latents, peak resident memory of the process
(ru_maxrss) after each phase, and the machine's load average before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", required=True)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-windows", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="/tmp/bench_export")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    from sae.fsutil import claim, remove

    # Delete only an earlier run of this benchmark (its scratch marker says so) or an empty folder.
    remove(out, "scratch")
    claim(out, "scratch")
    load = os.getloadavg()

    from sae.eval import EvalConfig, run_eval
    from sae.export.dashboard import write_dashboard
    from sae.export.neuronpedia import layer_of, write_neuronpedia
    from sae.export.view import Records

    res: dict = {"sae": args.sae, "tokens_asked": args.tokens, "threads": args.threads}
    res["load_before"] = [round(x, 2) for x in load]
    t0 = time.perf_counter()
    cfg = EvalConfig(
        [args.sae],
        suite="records",
        eval_tokens=args.tokens,
        n_boot=0,
        device=args.device,
        batch_windows=args.batch_windows,
        out=str(out / "report"),
    )
    run_eval(cfg)
    res["records_s"] = round(time.perf_counter() - t0, 1)
    res["peak_mb_after_records"] = round(peak_mb())
    name = Path(args.sae).resolve().name
    t1 = time.perf_counter()
    rec = Records.open(out / "report" / name / "records")
    prov = rec.info["activations"]
    write_dashboard(rec, out / "site", name, prov)
    res["dashboard_s"] = round(time.perf_counter() - t1, 1)
    t2 = time.perf_counter()
    write_neuronpedia(rec, out / "np", "all-minilm-l6-v2", name, layer_of(prov.get("hook")), prov)
    res["neuronpedia_s"] = round(time.perf_counter() - t2, 1)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["peak_mb"] = round(peak_mb())
    res["tokens"] = rec.info["tokens"]
    res["latents"] = rec.d_sae
    res["held_out"] = prov.get("held_out")
    res["site_mb"] = round(sum(p.stat().st_size for p in (out / "site").rglob("*")) / 2**20, 1)
    res["neuronpedia_mb"] = round(sum(p.stat().st_size for p in (out / "np").rglob("*")) / 2**20, 1)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
