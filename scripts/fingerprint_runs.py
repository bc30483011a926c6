"""sha256 of the weights of a few fixed small runs: the check that a refactor changed no number.

    OMP_NUM_THREADS=1 python scripts/fingerprint_runs.py                  # print the fingerprints
    OMP_NUM_THREADS=1 python scripts/fingerprint_runs.py --against REF.json   # compare, exit 1 if any differ
    OMP_NUM_THREADS=1 python scripts/fingerprint_runs.py --write REF.json     # keep them to compare later

Runs `sae train` (float32 step: `--autocast false`, float32 model) on synthetic data for every
architecture and on the built-in MiniLM for a TopK SAE and a transcoder, in a scratch folder,
and hashes each final SAE's `sae_weights.safetensors`. Same code, same machine, one thread:
same bytes. A change that claims to keep behaviour keeps these hashes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SYNTH = ["--activations", "synthetic", "--total-tokens", "120000", "--store.batch-size", "1024",
         "--store.buffer-tokens", "16384", "--eval-tokens", "8192"]  # fmt: skip
MINILM = ["--store.batch-size", "512", "--store.buffer-tokens", "8192", "--eval-tokens", "4096",
          "--model.dtype", "float32", "--sae.d-sae", "768"]  # fmt: skip
RUNS: dict[str, list[str]] = {
    "relu": [*SYNTH, "--sae.architecture", "relu", "--sae.d-sae", "512"],
    "topk": [*SYNTH, "--sae.architecture", "topk", "--sae.d-sae", "512", "--sae.k", "8"],
    "batchtopk": [*SYNTH, "--sae.architecture", "batchtopk", "--sae.d-sae", "512", "--sae.k", "8"],
    "jumprelu": [*SYNTH, "--sae.architecture", "jumprelu", "--sae.d-sae", "512"],
    "matryoshka": [
        *SYNTH,
        "--sae.architecture",
        "matryoshka",
        "--sae.d-sae",
        "512",
        "--sae.k",
        "8",
    ],  # fmt: skip
    "minilm-topk": [*MINILM, "--total-tokens", "30000", "--sae.k", "16"],
    "minilm-transcoder": [
        *MINILM,
        "--total-tokens",
        "20000",
        "--sae.k",
        "16",
        "--model.hooks",
        "resid_post.2",
        "mlp_out.3",
        "--hook",
        "resid_post.2",
        "--target-hook",
        "mlp_out.3",
    ],  # fmt: skip
}


def fingerprint(name: str, args: list[str], work: Path) -> str:
    out = work / name
    cmd = [sys.executable, "-m", "sae", "train", *args, "--autocast", "false", "--quiet",
           "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name}: sae train failed:\n{r.stderr[-2000:]}")
    (weights,) = sorted((out / "final").glob("*/sae_weights.safetensors"))
    from sae.fsutil import sha256_file

    return sha256_file(weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="a JSON file of fingerprints to compare with")
    ap.add_argument("--write", help="write the fingerprints to this JSON file")
    ap.add_argument("--only", nargs="*", choices=list(RUNS), help="a subset of the runs")
    a = ap.parse_args()
    from sae.fsutil import atomic_write_json, remove, scratch_dir

    work = scratch_dir("fingerprint-", tempfile.gettempdir())
    try:
        got = {name: fingerprint(name, RUNS[name], work) for name in a.only or RUNS}
    finally:
        remove(work, "scratch")
    for name, digest in got.items():
        print(f"{name:20s} {digest}")
    if a.write:
        atomic_write_json(a.write, got)
    if a.against:
        ref = json.loads(Path(a.against).read_text())
        differ = [n for n in got if ref.get(n) != got[n]]
        print("same" if not differ else f"DIFFERENT: {', '.join(differ)}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
