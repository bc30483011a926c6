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


def test_quick_fault_campaign(tmp_path):
    """SIGKILLs at seeded random moments then --resume: bit-identical weights and the same token
    count; a byte-flipped newest checkpoint is reported and skipped; a file-size limit hit while
    writing a checkpoint is one line on stderr and leaves the previous checkpoint resumable."""
    report = _campaign_module().campaign(tmp_path, seed=0, quick=True, only=None, log=print)
    _check(report)


@pytest.mark.slow
def test_full_fault_campaign(tmp_path):
    """The whole campaign: >= 20 kills over matrix, live, sweep, torchrun and harvest runs, three
    kinds of checkpoint corruption, disk full by file-size limit and (as root) a small tmpfs."""
    report = _campaign_module().campaign(tmp_path, seed=1, quick=False, only=None, log=print)
    _check(report)
    assert report["kills"] >= 20
