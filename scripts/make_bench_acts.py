"""A 1M-row .npy of MiniLM layer-3 activations for the training benchmarks, plus a held-out file.

    python scripts/make_bench_acts.py --out /tmp/bench          # about 3 minutes on 2 idle cores

Text: the docstrings of the installed site-packages (read with `ast`, as the built-in corpus
reads the standard library's), written to a .txt; `sae harvest` runs MiniLM over it
(resid_post.3, 128-token windows, nothing held out) and the shards are concatenated into
`train.npy` [rows, 384] float32. The held-out file `eval.npy` is the built-in corpus's held-out
windows (`--data.part eval`), so training and scoring never share text.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def docstrings(root: Path, max_chars: int) -> str:
    out, n = [], 0
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    out.append(doc)
                    n += len(doc)
                    if n >= max_chars:
                        return "\n\n".join(out)
    return "\n\n".join(out)


def harvest(out: Path, rows: int | None, *extra: str) -> np.ndarray:
    cmd = [sys.executable, "-m", "sae", "harvest", "--out", str(out), "--quiet", "--overwrite"]
    cmd += ["--max-tokens", str(rows)] if rows else []
    subprocess.run(cmd + list(extra), check=True)
    shards = sorted(out.glob("shard_*.safetensors"))
    return np.concatenate([load_file(str(s))["acts.resid_post.3"] for s in shards])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--chars", type=int, default=6_000_000)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.out / "site_docstrings.txt"
    if not text.exists():
        text.write_text(docstrings(Path(sysconfig.get_paths()["purelib"]), args.chars))
    acts = harvest(
        args.out / "train_cache", args.rows, "--data.source", str(text), "--data.eval-every", "0"
    )
    np.save(args.out / "train.npy", acts.astype(np.float32))
    held = harvest(args.out / "eval_cache", None, "--data.part", "eval")
    np.save(args.out / "eval.npy", held.astype(np.float32))
    print(f"train.npy {acts.shape}, eval.npy {held.shape} in {args.out}")


if __name__ == "__main__":
    main()
