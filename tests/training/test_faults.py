"""The fault-injection campaign (scripts/fault_campaign.py): a quick subset in the default suite,
the whole campaign marked slow. Pins "kill it at any moment, resume, get the same model"."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_campaign.py"


def _campaign_module():
    spec = importlib.util.spec_from_file_location("fault_campaign", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _check(report: dict) -> None:
    failures = [f for part in report["train"].values() for f in part["failures"]]
    for key in ("harvest", "corrupt", "disk_full", "harvest_disk_full"):
        failures += report.get(key, {}).get("failures", [])
    assert not failures, failures
    assert report["kills"] >= 1 and report["survived"] == report["kills"], report
    assert report["corrupt"]["caught"] == report["corrupt"]["cases"], report
    assert report["disk_full"]["ok"] == report["disk_full"]["cases"], report


def _alive(pid: int) -> bool:
    return not _campaign_module()._dead(pid)  # a zombie is dead


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_kill_reaches_workers_in_sessions_of_their_own(tmp_path):
    """Pins: the campaign killed only the launcher's process group, but torchrun starts its
    workers in new sessions, so they lived on as orphans (waiting forever for the dead launcher,
    or writing to the run folder beside the resumed run) and the torchrun scenario hung."""
    launcher = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
        "    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    killed, out = _campaign_module().run_and_kill([sys.executable, "-c", launcher], tmp_path, 5)
    worker = int(out.split()[0])
    try:
        assert killed and not _alive(worker)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


KILLED_IN_THE_FINAL_SAVE = """
import os, signal, sys
import sae.fsutil
replace_dir = sae.fsutil.replace_dir
def killed_before_the_rename(tmp, final, *args):
    if os.path.basename(os.path.dirname(final)) == "final":
        os.kill(os.getpid(), signal.SIGKILL)  # the SAE folder is written whole, not yet renamed
    replace_dir(tmp, final, *args)
sae.fsutil.replace_dir = killed_before_the_rename
from sae.cli import main
main(sys.argv[1:])
"""


def test_kill_during_the_final_save_then_resume(tmp_path):
    """Pins the quick campaign's `matrix-topk: chain 1 (2 kills): DIFFERENT` (issue 24): a
    SIGKILL while `final/<sae>/` was being written (its temporary folder complete, not yet
    renamed: a window of some 50 ms at the end of a run, hit when a kill's seeded moment met a
    loaded machine) left `final/.<sae>.tmp-<random>/`, weights included, beside the folder the
    resume then wrote. Such a write now stages in the run's staging folder (sae/fsutil.py), which
    the resumed run empties, and the campaign compares every path under final/, so the chain
    ends identical to the uninterrupted run."""
    fc = _campaign_module()
    fc._rows = 4096
    args = fc._matrix(tmp_path, "--sae.k", "4", *fc.CKPT)
    ref = fc.run(fc.sae_cmd([*args, "--out", "ref"]), tmp_path)
    assert ref.returncode == 0, ref.stderr
    cut = fc.run([sys.executable, "-c", KILLED_IN_THE_FINAL_SAVE, *args, "--out", "cut"], tmp_path)
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    assert any((tmp_path / "cut" / ".sae-tmp").iterdir())  # the run's staging folder holds it
    end = fc.run(fc.sae_cmd([*args, "--out", "cut", "--resume"]), tmp_path)
    assert end.returncode == 0, end.stderr
    assert fc.train_result(tmp_path / "cut") == fc.train_result(tmp_path / "ref")


REPEAT = int(os.environ.get("SAE_FAULT_REPEAT") or 1)
"""How many times the default suite runs the quick campaign, with seeds 0, 1, ...
(`SAE_FAULT_REPEAT=20 python -m pytest`): a defect that shows once in many runs, as the final-save
kill did, shows within the suite's own conditions."""


@pytest.mark.parametrize("seed", range(REPEAT))
def test_quick_fault_campaign(tmp_path, seed):
    """SIGKILLs at seeded random moments then --resume: bit-identical weights and the same token
    count; a byte-flipped newest checkpoint is reported and skipped; a file-size limit hit while
    writing a checkpoint is one line on stderr and leaves the previous checkpoint resumable."""
    report = _campaign_module().campaign(tmp_path, seed=seed, quick=True, only=None, log=print)
    _check(report)


@pytest.mark.slow
def test_full_fault_campaign(tmp_path):
    """The whole campaign: >= 20 kills over matrix, live, sweep, torchrun and harvest runs, three
    kinds of checkpoint corruption, disk full by file-size limit and (as root) a small tmpfs."""
    report = _campaign_module().campaign(tmp_path, seed=1, quick=False, only=None, log=print)
    _check(report)
    assert report["kills"] >= 20
