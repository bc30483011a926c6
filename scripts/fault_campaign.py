"""Fault-injection campaign: kill `sae train` and `sae harvest` at random moments, resume, and
check that the result is bit-identical to an uninterrupted run.

    python scripts/fault_campaign.py                      # the full campaign (>= 20 kills)
    python scripts/fault_campaign.py --quick              # the subset tests/training/test_faults.py runs
    python scripts/fault_campaign.py --only matrix-topk corrupt --seed 3 --json out.json

Everything is black-box: each run is `python -m sae ...` in a subprocess (torchrun for the
distributed case), killed with SIGKILL to its whole process group after a seeded random delay,
then continued with the same command plus `--resume` (`sae harvest` resumes by itself). A chain
of kills ends with an uninterrupted resume whose final SAE weights must equal, bit for bit, the
weights of the uninterrupted reference run, and whose trainer/store state must report the same
token count and stream checksum (no row lost or seen twice). Also: disk full while writing a
checkpoint (a small tmpfs when this process may mount one, else RLIMIT_FSIZE), and a corrupted
newest checkpoint (truncated, bytes flipped, a file deleted), each followed by a resume.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sae.fsutil import remove, scratch_dir

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "SAE_STREAM_CHECK": "1",  # each checkpoint records the rows trained and their checksum
}


# -- processes -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sae_cmd(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "sae", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(_free_port()),
        "-m",
        "sae",
        *args,
    ]


def run(
    cmd: list[str], cwd: Path, timeout: float = 900, preexec=None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec
    )


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # exited meanwhile
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return kids


def _tree(pid: int) -> list[int]:
    """Every descendant of `pid`."""
    kids, tree, todo = _children(), [], [pid]
    while todo:
        found = kids.get(todo.pop(), [])
        tree += found
        todo += found
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`'s process group and every descendant. torchrun starts its workers in
    sessions of their own, so killing the launcher's group alone leaves them running (orphans
    that keep writing to the run folder, or wait forever for the dead launcher's store). The
    tree is frozen with SIGSTOP first so that nothing forks while it is being listed."""
    for p in [pid, *_tree(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    pids = [pid, *_tree(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: a killed process can still be listed as running (or
    # stopped) for a moment. Wait until each is gone or a zombie, so that the resume that follows
    # never overlaps a dying worker.
    deadline = time.monotonic() + 30
    while any(not _dead(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _dead(pid: int) -> bool:
    """Has `pid` exited (gone, or a zombie not yet reaped)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def run_and_kill(cmd: list[str], cwd: Path, delay: float) -> tuple[bool, str]:
    """Start `cmd`, SIGKILL it and all its descendants after `delay` seconds; (was it killed,
    output)."""
    p = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        p.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        killed = True
    out, _ = p.communicate()
    return killed, out


# -- what a finished run is ------------------------------------------------------------------
def tensor_digests(path: Path) -> dict[str, str]:
    """sha256 of each tensor's bytes (the file's own bytes also hold metadata)."""
    import torch
    from safetensors.torch import load_file

    return {
        k: hashlib.sha256(v.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
        for k, v in sorted(load_file(str(path)).items())
    }


def train_result(out: Path) -> dict:
    """Final weights (per tensor sha256), every path under final/ and the run folder's hidden
    entries (what killed writes left: a resumed run must leave none), and the stream
    accounting of the last checkpoint."""
    final = out / "final"
    finals = sorted(p for p in final.iterdir() if not p.name.startswith("."))
    ckpts = sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    last = ckpts[-1]
    trainer = json.loads((last / "trainer.json").read_text())
    ranks = json.loads((last / "store_state.json").read_text())["ranks"]
    return {
        "weights": {f.name: tensor_digests(f / "sae_weights.safetensors") for f in finals},
        "final_paths": sorted(str(p.relative_to(final)) for p in final.rglob("*")),
        "hidden": sorted(p.name for p in out.iterdir() if p.name.startswith(".")),
        "tokens": trainer["tokens"],
        "stream": trainer["stream"],  # recorded under SAE_STREAM_CHECK=1 (ENV)
        "rows_yielded": [r["rows_yielded"] for r in ranks],
    }


def harvest_result(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    return {"n_tokens": m["n_tokens"], "shards": [s["sha256"] for s in m["shards"]]}


# -- inputs ----------------------------------------------------------------------------------
MATRIX_ROWS = {"full": 60_000, "quick": 20_000}
_rows = MATRIX_ROWS["full"]


def matrix_file(folder: Path, d: int = 16) -> str:
    import numpy as np

    n = _rows
    path = folder / f"acts{n}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, d), dtype=np.float32) * rng.uniform(0.5, 2.0, d)
        np.save(path, x.astype(np.float32))
    return str(path)


def tiny_model(folder: Path) -> tuple[str, str]:
    """(model folder, text file): a random-weight 3-layer GPT-2 and a small jsonl corpus, built as
    the test suite builds them (tests/conftest.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import CORPUS, _build

    model, text = folder / "tiny-gpt2", folder / "docs.jsonl"
    if not model.exists():
        _build("gpt2", str(model))
        with open(text, "w") as f:
            for i, line in enumerate(CORPUS * 40):
                f.write(json.dumps({"text": f"{i}: {line}"}) + "\n")
    return str(model), str(text)


SMALL = ["--sae.d-sae", "64", "--store.batch-size", "256", "--store.buffer-tokens", "4096"]
SMALL += ["--eval-tokens", "2048", "--quiet"]


def _matrix(folder: Path, *extra: str) -> list[str]:
    return ["train", "--activations", matrix_file(folder), *SMALL, *extra]


def _live(folder: Path, *extra: str) -> list[str]:
    model, text = tiny_model(folder)
    return [
        "train",
        "--model.name",
        model,
        "--model.hooks",
        "resid_post.1",
        "--model.batch-windows",
        "8",
        "--data.source",
        text,
        "--data.context-size",
        "16",
        "--total-tokens",
        "20000",
        *SMALL,
        *extra,
    ]


@dataclasses.dataclass
class Scenario:
    name: str
    args: Callable[[Path], list[str]]
    kills: int
    """kills delivered in the full campaign (the quick subset uses `quick` of them)."""
    quick: int = 0
    nproc: int = 1


CKPT = ["--checkpoint-every", "3000"]
TRAIN = [
    Scenario("matrix-topk", lambda f: _matrix(f, "--sae.k", "4", *CKPT), 6, quick=2),
    Scenario(
        "matrix-jumprelu",
        lambda f: _matrix(f, "--sae.architecture", "jumprelu", *CKPT),
        4,
    ),
    Scenario(
        "matrix-sweep",
        lambda f: _matrix(f, "--sweep", "k=4", "architecture=jumprelu", *CKPT),
        4,
        quick=0,
    ),
    Scenario("live-topk", lambda f: _live(f, "--sae.k", "4", *CKPT), 4),
    Scenario("torchrun-2", lambda f: _matrix(f, "--sae.k", "4", *CKPT), 2, nproc=2),
]


# -- the campaign's parts ---------------------------------------------------------------------
_references: dict[tuple, tuple[Path, float]] = {}


def reference(args: list[str], work: Path, nproc: int = 1) -> tuple[Path, float]:
    """The uninterrupted run of `args` (made once per campaign); (its folder, wall seconds)."""
    key = (tuple(args), nproc)
    if key not in _references:
        out = work / f"ref-{len(_references)}"
        remove(out, "run")
        t0 = time.perf_counter()
        ref = run(sae_cmd([*args, "--out", str(out)], nproc), work)
        if ref.returncode != 0:
            raise RuntimeError(f"reference run {args[:3]} failed:\n{ref.stdout}\n{ref.stderr}")
        _references[key] = out, time.perf_counter() - t0
    return _references[key]


def kill_chains(scn: Scenario, work: Path, rng: random.Random, kills: int, log) -> dict:
    """Deliver `kills` SIGKILLs over chains of at most 3; each chain ends in a clean resume that
    must match the uninterrupted reference."""
    work.mkdir(parents=True, exist_ok=True)
    args = scn.args(work)
    ref, t_full = reference(args, work, scn.nproc)
    want = train_result(ref)
    delivered = survived = chains = 0
    failures: list[str] = []
    while delivered < kills:
        chains += 1
        out = f"cut-{scn.name}-{chains}"
        remove(work / out, "run")
        in_chain, resume = 0, []
        while in_chain < min(3, kills - delivered):
            delay = rng.uniform(0.05, 1.0) * t_full
            t0 = time.perf_counter()
            killed, text = run_and_kill(
                sae_cmd([*args, "--out", out, *resume], scn.nproc), work, delay
            )
            if not killed:
                if not resume:  # a whole run beat its kill: the machine's load dropped
                    t_full = min(t_full, time.perf_counter() - t0)
                break  # finished before the kill: the chain is complete
            resume = ["--resume"]
            in_chain += 1
            log(f"  {scn.name}: kill {delivered + in_chain} at {delay:.1f}s")
        end = run(sae_cmd([*args, "--out", out, "--resume"], scn.nproc), work)
        ok = end.returncode == 0 and train_result(work / out) == want
        log(f"  {scn.name}: chain {chains} ({in_chain} kills): {'same' if ok else 'DIFFERENT'}")
        if not ok:
            failures.append(f"chain {chains}: rc={end.returncode} {end.stderr.strip()[-300:]}")
        delivered += in_chain
        survived += in_chain if ok else 0
    return {"kills": delivered, "survived": survived, "failures": failures, "t_full_s": t_full}


def _harvest_args(work: Path) -> list[str]:
    model, text = tiny_model(work)
    args = ["harvest", "--model.name", model, "--model.hooks", "resid_post.1", "resid_post.2"]
    args += ["--data.source", text, "--data.context-size", "16", "--model.batch-windows", "4"]
    return [*args, "--shard-tokens", "1000", "--quiet"]


def harvest_chains(work: Path, rng: random.Random, kills: int, log) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    args = _harvest_args(work)
    ref, t_full = reference(args, work)
    want = harvest_result(ref)
    delivered = survived = chains = 0
    failures = []
    while delivered < kills:
        chains += 1
        out = f"cut{chains}"
        remove(work / out, "cache")  # a complete cache would just be kept
        in_chain = 0
        while in_chain < min(3, kills - delivered):
            delay = rng.uniform(0.05, 1.0) * t_full
            t0 = time.perf_counter()
            killed, _ = run_and_kill(sae_cmd([*args, "--out", out]), work, delay)
            if not killed:
                if in_chain == 0:  # a whole harvest beat its kill: the machine's load dropped
                    t_full = min(t_full, time.perf_counter() - t0)
                break
            in_chain += 1
            log(f"  harvest: kill {delivered + in_chain} at {delay:.1f}s")
        end = run(sae_cmd([*args, "--out", out]), work)
        ok = end.returncode == 0 and harvest_result(work / out) == want
        log(f"  harvest: chain {chains} ({in_chain} kills): {'same' if ok else 'DIFFERENT'}")
        if not ok:
            failures.append(f"chain {chains}: rc={end.returncode} {end.stderr.strip()[-300:]}")
        delivered += in_chain
        survived += in_chain if ok else 0
    return {"kills": delivered, "survived": survived, "failures": failures, "t_full_s": t_full}


def _shards_intact(out: Path) -> bool:
    """Every shard the manifest lists is on disk with the sha256 the manifest records."""
    m = json.loads((out / "manifest.json").read_text())
    return bool(m["shards"]) and all(
        hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
        for s in m["shards"]
    )


def harvest_disk_full_cases(work: Path, log, tmpfs: bool = True) -> dict:
    """`sae harvest` runs out of space after some shards are written (RLIMIT_FSIZE below one
    shard's size, and as root a tmpfs with room for two and a half shards): one line on stderr,
    every listed shard intact, and rerunning the same command once space is back ends with
    shards identical to the uninterrupted harvest."""
    work.mkdir(parents=True, exist_ok=True)
    args = _harvest_args(work)
    ref = reference(args, work)[0]
    want = harvest_result(ref)
    shard_bytes = max(f.stat().st_size for f in ref.glob("shard_*.safetensors"))
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    modes = ["rlimit"] + (["tmpfs"] if tmpfs and _can_mount_tmpfs(mnt) else [])
    results, failures = [], []
    for mode in modes:
        preexec = None
        if mode == "tmpfs":
            size = int(2.5 * shard_bytes) + 64 * 1024
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True
            )
            out = mnt / "run"
        else:
            out = work / "full-harvest"
            remove(out, "cache")
            _wait_for(sae_cmd([*args, "--out", str(out)]), work, lambda o=out: _n_shards(o) >= 2)
            limit = shard_bytes // 2

            def preexec(limit=limit):
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        first = run(sae_cmd([*args, "--out", str(out)]), work, preexec=preexec)
        err = first.stderr.strip().splitlines()
        one_line = first.returncode == 1 and len(err) == 1 and "out of disk space" in err[0]
        intact = _shards_intact(out)
        if mode == "tmpfs":  # free space: grow the tmpfs
            subprocess.run(["mount", "-o", f"remount,size={40 * size}", str(mnt)], check=True)
        end = run(sae_cmd([*args, "--out", str(out)]), work)
        same = end.returncode == 0 and harvest_result(out) == want
        if mode == "tmpfs":
            subprocess.run(["umount", str(mnt)], check=True)
        ok = one_line and intact and same
        results.append(ok)
        log(f"  harvest disk full ({mode}): {'ok' if ok else 'FAILED'} [{err[-1] if err else ''}]")
        if not ok:
            failures.append(
                f"{mode}: one_line={one_line} intact={intact} same={same} stderr={err[-3:]} "
                f"end={end.stderr.strip()[-300:]}"
            )
    return {"cases": len(results), "ok": sum(results), "modes": modes, "failures": failures}


def _n_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait_for(cmd: list[str], work: Path, done: Callable[[], bool]) -> None:
    """Run `cmd` until `done()`, then SIGKILL it."""
    p = subprocess.Popen(
        cmd,
        cwd=work,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not done():
        time.sleep(0.05)
    if p.poll() is None:
        kill_tree(p.pid)
    p.wait()


def _wait_for_checkpoints(cmd: list[str], work: Path, out: str, n: int) -> None:
    """Run `cmd` until `out` holds n complete checkpoints, then SIGKILL it."""

    def enough() -> bool:
        return sum((d / "manifest.json").exists() for d in (work / out).glob("[0-9]*")) >= n

    _wait_for(cmd, work, enough)


def _truncate(p: Path) -> None:
    os.truncate(p / "trainer.json", 7)


def _flip(p: Path) -> None:
    files = sorted(p.rglob("trainer_state.safetensors"))
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x5A
    files[0].write_bytes(bytes(data))


def _delete(p: Path) -> None:
    remove(next(iter(sorted(p.rglob("sae_weights.safetensors")))), "sae")


DAMAGE = {"truncated": _truncate, "bytes flipped": _flip, "file deleted": _delete}


def corrupt_cases(work: Path, log, kinds: tuple[str, ...] = tuple(DAMAGE)) -> dict:
    """Newest checkpoint damaged after a kill: the resume reports it in one line, falls back to
    the previous one, and still ends bit-identical."""
    work.mkdir(parents=True, exist_ok=True)
    args = _matrix(work, "--sae.k", "4", *CKPT)
    want = train_result(reference(args, work)[0])
    caught, failures = 0, []
    for name in kinds:
        damage = DAMAGE[name]
        out = f"corrupt-{name.replace(' ', '-')}"
        remove(work / out, "run")
        _wait_for_checkpoints(sae_cmd([*args, "--out", out]), work, out, 2)
        newest = max((work / out).glob("[0-9]*"))
        damage(newest)
        end = run(sae_cmd([*args, "--out", out, "--resume"]), work)
        reported = [line for line in end.stdout.splitlines() if "skipping checkpoint" in line]
        ok = end.returncode == 0 and len(reported) == 1 and train_result(work / out) == want
        caught += ok
        log(f"  corrupt ({name}): {'caught' if ok else 'MISSED'}")
        if not ok:
            failures.append(f"{name}: rc={end.returncode} {end.stderr.strip()[-300:]}")
    return {"cases": len(kinds), "caught": caught, "failures": failures}


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode == 0:
        subprocess.run(["umount", str(path)], check=True)
    return r.returncode == 0


def disk_full_cases(work: Path, log, tmpfs: bool = True) -> dict:
    """Run out of space while writing a checkpoint: one line on stderr, the previous checkpoint
    intact, and after space is freed, `--resume` ends bit-identical."""
    work.mkdir(parents=True, exist_ok=True)
    args = _matrix(work, "--sae.k", "4", *CKPT)
    ref = reference(args, work)[0]
    want = train_result(ref)
    ckpt_bytes = sum(f.stat().st_size for f in max(ref.glob("[0-9]*")).rglob("*"))
    results, failures = [], []
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    modes = ["rlimit"] + (["tmpfs"] if tmpfs and _can_mount_tmpfs(mnt) else [])
    for mode in modes:
        out = f"full-{mode}"
        if mode == "tmpfs":
            # Room for the config, the metrics and two checkpoints, not for a third beside them.
            size = int(2.6 * ckpt_bytes) + 64 * 1024
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True
            )
            out = str(mnt / "run")
            first = run(sae_cmd([*args, "--out", out]), work)
        else:
            # A first leg writes checkpoints; the second may not write a file as large as one
            # checkpoint's trainer state.
            _wait_for_checkpoints(sae_cmd([*args, "--out", out]), work, out, 2)
            limit = (
                min(f.stat().st_size for f in (work / out).rglob("trainer_state.safetensors")) // 2
            )

            def cap(limit=limit):
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            first = run(sae_cmd([*args, "--out", out, "--resume"]), work, preexec=cap)
        err = first.stderr.strip().splitlines()
        latest = max((work / out).glob("[0-9]*"), default=None)
        intact = latest is not None and (latest / "manifest.json").exists()
        one_line = (
            first.returncode not in (0, None)
            and len(err) == 1
            and ("No space" in err[0] or "too large" in err[0] or "disk" in err[0])
        )
        if mode == "tmpfs":  # free space: grow the tmpfs
            subprocess.run(["mount", "-o", f"remount,size={8 * size}", str(mnt)], check=True)
        end = run(sae_cmd([*args, "--out", out, "--resume"]), work)
        same = end.returncode == 0 and train_result(work / out) == want
        if mode == "tmpfs":
            shutil.copytree(out, work / "full-tmpfs-copy", dirs_exist_ok=True)
            subprocess.run(["umount", str(mnt)], check=True)
        ok = one_line and intact and same
        results.append(ok)
        log(f"  disk full ({mode}): {'ok' if ok else 'FAILED'} [{err[-1] if err else ''}]")
        if not ok:
            failures.append(
                f"{mode}: one_line={one_line} intact={intact} same={same} stderr={err[-3:]} "
                f"end={end.stderr.strip()[-300:]}"
            )
    return {"cases": len(results), "ok": sum(results), "modes": modes, "failures": failures}


# -- main ------------------------------------------------------------------------------------
def campaign(work: Path, seed: int, quick: bool, only: list[str] | None, log=print) -> dict:
    """The quick subset: a few kills, one corruption and one disk-full case on a smaller matrix,
    all sharing one reference run."""
    global _rows
    _rows = MATRIX_ROWS["quick" if quick else "full"]
    _references.clear()
    rng = random.Random(seed)
    report: dict = {"seed": seed, "quick": quick, "train": {}}
    want = lambda name: not only or name in only
    for scn in TRAIN:
        n = scn.quick if quick else scn.kills
        if n and want(scn.name):
            log(f"{scn.name}: {n} kills")
            sub = work / ("matrix" if scn.name.startswith("matrix") else scn.name)
            report["train"][scn.name] = kill_chains(scn, sub, rng, n, log)
    if want("harvest") and not quick:
        log("harvest: 4 kills")
        report["harvest"] = harvest_chains(work / "harvest", rng, 4, log)
    if want("corrupt"):
        kinds = ("bytes flipped",) if quick else tuple(DAMAGE)
        report["corrupt"] = corrupt_cases(work / "matrix", log, kinds)
    if want("disk-full"):
        report["disk_full"] = disk_full_cases(work / "matrix", log, tmpfs=not quick)
    if want("harvest-disk-full") and not quick:
        report["harvest_disk_full"] = harvest_disk_full_cases(work / "harvest", log)
    parts = list(report["train"].values()) + ([report["harvest"]] if "harvest" in report else [])
    report["kills"] = sum(p["kills"] for p in parts)
    report["survived"] = sum(p["survived"] for p in parts)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the default-suite subset")
    ap.add_argument(
        "--only",
        nargs="*",
        help="parts to run: matrix-topk, matrix-jumprelu, matrix-sweep, live-topk, torchrun-2, "
        "harvest, corrupt, disk-full, harvest-disk-full (default: all)",
    )
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the report here")
    a = ap.parse_args()
    work = a.work or scratch_dir("fault-campaign-")
    t0 = time.perf_counter()
    report = campaign(work, a.seed, a.quick, a.only)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [
        p
        for p in [
            *report["train"].values(),
            report.get("harvest"),
            report.get("corrupt"),
            report.get("disk_full"),
            report.get("harvest_disk_full"),
        ]
        if p and p["failures"]
    ]
    print(
        f"kills survived and resumed bit-identically: {report['survived']}/{report['kills']}; "
        f"corrupt checkpoints caught: {report.get('corrupt', {}).get('caught')}/"
        f"{report.get('corrupt', {}).get('cases')}; disk full handled: "
        f"{report.get('disk_full', {}).get('ok')}/{report.get('disk_full', {}).get('cases')}; "
        f"harvest disk full handled: {report.get('harvest_disk_full', {}).get('ok')}/"
        f"{report.get('harvest_disk_full', {}).get('cases')}"
    )
    if not a.work:
        remove(work, "scratch")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
