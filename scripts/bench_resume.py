"""Resume cost of a live run at 10% and 90% of one pass: seek to the saved text position vs
re-read (and re-tokenize) the text before it.

    python scripts/bench_resume.py                      # MiniLM on CPU; figures in BENCHMARKS.md
    python scripts/bench_resume.py --docs 20000 --source builtin

For each source and fraction f, the window at f of one pass and its text position are found
(tokenizing only), then the time from a fresh LiveSource to its first piece at that window (one
forward pass of `batch_windows` windows) is measured, with the saved position (seek) and without
it (the old behaviour: re-read and re-tokenize everything before it). A store resume adds a
fixed cost on top: re-reading at most two chunks (`store.buffer_tokens` rows of forward passes),
which does not depend on how far the run got.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sae.activations.sources import LiveSource
from sae.activations.text import builtin_documents
from sae.config.schema import DataConfig, ModelConfig, StoreConfig


def _corpus(folder: Path, n_docs: int) -> str:
    path = folder / "docs.jsonl"
    with open(path, "w") as f:
        for i, text in zip(range(n_docs), _cycle(builtin_documents), strict=False):
            f.write(json.dumps({"text": f"{i}. {text}"}) + "\n")
    return str(path)


def _cycle(make):
    while True:
        yield from make()


def _first_piece(model, tok, data_cfg, store_cfg, cursor, position) -> float:
    t0 = time.perf_counter()
    src = LiveSource(ModelConfig(), data_cfg, store_cfg, model=model, tokenizer=tok)
    src.seek(cursor, position)
    next(src.pieces(cursor))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000, help="documents in the local jsonl")
    ap.add_argument("--source", nargs="*", default=["jsonl", "builtin"])
    a = ap.parse_args()
    from sae.activations.capture import load_model

    model, tok = load_model(ModelConfig())
    store_cfg = StoreConfig()
    tmp = Path(tempfile.mkdtemp())
    for name in a.source:
        source = _corpus(tmp, a.docs) if name == "jsonl" else "builtin"
        data_cfg = DataConfig(source=source, context_size=128)
        windows = LiveSource(ModelConfig(), data_cfg, store_cfg, model=model, tokenizer=tok).windows
        positions = {i: windows.position for i, _ in windows.iter_from(0)}
        order = sorted(positions)
        for frac in (0.1, 0.9):
            cursor = order[int(frac * (len(order) - 1))]
            seek = _first_piece(model, tok, data_cfg, store_cfg, cursor, positions[cursor])
            reread = _first_piece(model, tok, data_cfg, store_cfg, cursor, None)
            print(
                f"{name:8s} {len(order):>7,d} windows  at {frac:.0%}: seek {seek:6.2f} s   "
                f"re-read {reread:6.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
