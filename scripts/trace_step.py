"""Count the `sae/` functions and files one TopK training step runs through.

    OMP_NUM_THREADS=1 python scripts/trace_step.py            # one CPU step of a small synthetic run
    OMP_NUM_THREADS=1 python scripts/trace_step.py --list     # and every function, in call order

Runs a small `sae train` (synthetic data, TopK, batch 256) in this process under
`sys.setprofile` and records the Python calls made between the start of one step and the start
of the next, in steady state (step 3: the buffer is full, nothing is initialised or written).
A step starts where the loop asks for the LR schedule (`schedule`, called once per step). It
counts, among the functions whose code lives under `sae/`: the calls (a generator resumed
counts as a call), the distinct functions, the distinct files, and the switches (consecutive
calls whose files differ). A measure of how many joints one step crosses, for issue 31.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

RUN = (
    "--activations synthetic --total-tokens 2048 --store.batch-size 256 --store.buffer-tokens "
    "16384 --eval-tokens 512 --sae.architecture topk --sae.d-sae 256 --sae.k 8 --autocast false "
    "--quiet"
)
"""the run traced: `sae train` flags."""
STEP = 3
"""the step traced (counted from 1): the buffer is full and the first batch's work is done."""


def trace(argv: list[str]) -> list[tuple[str, str, int]]:
    """The `sae/` calls (file, function, line) of step STEP of `sae train argv`."""
    import sae
    from sae.cli import main

    root = str(Path(sae.__file__).resolve().parent)
    schedules, calls = 0, []

    def profile(frame, event, arg):
        nonlocal schedules
        if event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(root):
            return
        if code.co_name == "schedule":
            schedules += 1
        if schedules == STEP:
            rel = str(Path(code.co_filename).relative_to(Path(root).parent))
            calls.append((rel, code.co_qualname, code.co_firstlineno))
        elif schedules > STEP:
            sys.setprofile(None)

    sys.setprofile(profile)
    try:
        main(["train", *argv])
    finally:
        sys.setprofile(None)
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every call in order")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        calls = trace([*RUN.split(), "--out", str(Path(work) / "run")])
    if a.list:
        for f, name, line in calls:
            print(f"  {f}:{line} {name}")
    files = [f for f, _, _ in calls]
    switches = sum(1 for x, y in zip(files, files[1:], strict=False) if x != y)
    print(
        f"one TopK step: {len(calls)} calls, {len(set(calls))} functions, {len(set(files))} "
        f"files, {switches} switches between files"
    )
    for f in sorted(set(files)):
        print(f"  {f}: {len({c for c in calls if c[0] == f})} functions")


if __name__ == "__main__":
    main()
