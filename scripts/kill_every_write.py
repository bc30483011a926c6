"""Kill a small `sae train` run at each of its filesystem writes in turn, resume it, and compare
the result with the uninterrupted run's (scripts/fault_campaign.py's `train_result`).

    python scripts/kill_every_write.py --work W                 # every write of the run
    python scripts/kill_every_write.py --work W --first 230     # from the 230th on (the end)

Where fault_campaign.py kills at random moments, this visits every moment a write can be cut:
the run is forked from this process (its imports done once), the fork counts the calls that
change the file system (os.open for writing, fsync, mkdir, replace, rename, unlink, rmdir) and
SIGKILLs itself just before the N-th; then `--resume` runs to the end in a second fork. One line
per N: `same`, or `DIFFERENT` with what differs. Linux only (fork, SIGKILL).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # the same kernels in every fork
os.environ["SAE_STREAM_CHECK"] = "1"  # checkpoints record the stream (fault_campaign.train_result)

spec = importlib.util.spec_from_file_location(
    "fault_campaign", Path(__file__).resolve().parent / "fault_campaign.py"
)
fc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fc  # its dataclasses look their module up there
spec.loader.exec_module(fc)

WRITES = ("open", "fsync", "mkdir", "replace", "rename", "unlink", "rmdir")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _kill_at(n: int) -> list[int]:
    """Make this process SIGKILL itself just before its n-th write; the running count."""
    count = [0]
    for name in WRITES:
        original = getattr(os, name)

        def counted(*a, _original=original, _name=name, **k):
            if _name != "open" or (len(a) > 1 and a[1] & WRITE_FLAGS):
                count[0] += 1
                if count[0] == n:
                    sys.stderr.write(f"killed before write {n}: {_name} {a[0]}\n")
                    os.kill(os.getpid(), signal.SIGKILL)
            return _original(*a, **k)

        setattr(os, name, counted)
    return count


def _forked(argv: list[str], kill_at: int | None = None) -> int:
    """Run `sae` with `argv` in a fork; its wait status."""
    from sae.cli import main

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            count = _kill_at(kill_at) if kill_at else None
            main(argv)
            if count is not None:
                sys.stderr.write(f"writes: {count[0]}\n")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the runs")
    ap.add_argument("--rows", type=int, default=4096, help="rows of the activation matrix")
    ap.add_argument("--first", type=int, default=1, help="the first write to kill at")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    import sae.training.train  # noqa: F401  (imported once, before the forks)
    from sae.fsutil import remove

    fc._rows = a.rows
    args = fc._matrix(a.work, "--sae.k", "4", "--checkpoint-every", "1024")
    ref = a.work / "ref"
    remove(ref, "run")
    _forked([*args, "--out", str(ref)], kill_at=10**9)  # counts its writes
    want = fc.train_result(ref)
    n, bad = a.first, 0
    while True:
        out = a.work / "cut"
        remove(out, "run")
        if os.WIFEXITED(_forked([*args, "--out", str(out)], kill_at=n)):
            break  # the run has fewer writes than n
        status = _forked([*args, "--out", str(out), "--resume"])
        try:
            got = fc.train_result(out)
            diff = [k for k in want if got[k] != want[k]] if status == 0 else ["exit status"]
        except Exception as e:  # a leftover the comparison cannot read
            diff = [repr(e)]
        bad += bool(diff)
        print(f"write {n}: {'DIFFERENT ' + str(diff) if diff else 'same'}", flush=True)
        n += 1
    print(f"{n - a.first} kill points, {bad} DIFFERENT")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
