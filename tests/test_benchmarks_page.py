"""BENCHMARKS.md is generated from benchmarks/results/*.json by scripts/make_benchmarks.py: the
committed page must be what the files give, and every row must say how it was measured."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_benchmarks", ROOT / "scripts/make_benchmarks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mb = _script()


def test_committed_page_is_the_scripts_output():
    """Pins: BENCHMARKS.md edited by hand, or a result file changed without regenerating the page
    (run `python scripts/make_benchmarks.py`)."""
    assert (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8") == mb.render(ROOT)


def test_every_row_has_command_machine_date_and_load():
    """Pins: a figure on the page without the command that produced it, the machine it ran on,
    the date or the load (load_areas checks every file; this reads them again independently)."""
    machines = json.loads((ROOT / "benchmarks/machines.json").read_text(encoding="utf-8"))
    files = sorted((ROOT / "benchmarks/results").glob("*.json"))
    assert files
    for path in files:
        for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
            assert row["command"].strip(), path
            assert row["machine"] in machines, path
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["measured"]), path
            assert row["load"].strip(), path
    mb.load_areas(ROOT)


def test_page_describes_the_project_not_its_history():
    """Pins the rewrite of issue 26: no dated 'Session N' sections, one section per result file,
    each area's table carrying the reproduce/machine/date columns."""
    page = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#+ (.*)$", page, flags=re.M)
    assert not [h for h in headings if re.search(r"\bsession\b", h, flags=re.I)]
    _, areas = mb.load_areas(ROOT)
    assert [f"## {a['area']}" in page for a in areas] == [True] * len(areas)
    assert page.count("| how to reproduce | machine | measured | load |") == len(areas)


def _copy(tmp_path: Path) -> Path:
    (tmp_path / "benchmarks").mkdir()
    shutil.copytree(ROOT / "benchmarks/results", tmp_path / "benchmarks/results")
    shutil.copy(ROOT / "benchmarks/machines.json", tmp_path / "benchmarks/machines.json")
    return tmp_path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("command"), "lacks command"),
        (lambda r: r.update(machine="my-laptop"), "machine='my-laptop' is not a key"),
        (lambda r: r.update(measured="yesterday"), "measured='yesterday' is not a YYYY-MM-DD date"),
        (lambda r: r.update(load=" "), "load must be a non-empty string"),
        (lambda r: r["cells"].update(nonsense="1"), "not among the columns"),
        (lambda r: r.update(session="6"), "unknown field(s) ['session']"),
    ],
)
def test_a_bad_row_is_refused_with_one_sentence(tmp_path, change, message):
    """Pins that the checks can fail: a planted row without a command, with an unknown machine, a
    date that is not ISO, a blank load, a cell outside the columns or an unknown field is refused
    with a message naming the file and row."""
    root = _copy(tmp_path)
    path = root / "benchmarks/results/main-job.json"
    area = json.loads(path.read_text(encoding="utf-8"))
    change(area["rows"][0])
    path.write_text(json.dumps(area), encoding="utf-8")
    with pytest.raises(mb.ResultError, match=re.escape(message)) as e:
        mb.render(root)
    assert "benchmarks/results/main-job.json row 0" in str(e.value)


def test_a_new_row_appears_on_the_page(tmp_path):
    """Pins the way to add a result: a row appended to a result file shows up in its area's
    table with its command, machine and date, and the output is deterministic."""
    root = _copy(tmp_path)
    path = root / "benchmarks/results/precision.json"
    area = json.loads(path.read_text(encoding="utf-8"))
    area["rows"].append(
        {
            "cells": {"what": "a planted row", "fp32": "1.0", "bf16": "2.0"},
            "command": "python scripts/bench_train.py --device cuda --autocast",
            "machine": "vm-epyc-2c",
            "measured": "2026-12-04",
            "load": "idle",
        }
    )
    path.write_text(json.dumps(area), encoding="utf-8")
    page = mb.render(root)
    assert page == mb.render(root)
    line = next(x for x in page.splitlines() if x.startswith("| a planted row |"))
    assert (
        "`python scripts/bench_train.py --device cuda --autocast` | vm-epyc-2c | 2026-12-04" in line
    )


def test_check_flag_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    """Pins `make_benchmarks.py --check`: exit 0 on the committed page, 1 once the page differs."""
    assert mb.main(["--check"]) == 0
    root = _copy(tmp_path)
    (root / "BENCHMARKS.md").write_text("# Benchmarks\n\n## Session 11\n", encoding="utf-8")
    monkeypatch.setattr(mb, "ROOT", root)
    assert mb.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err


CITED = re.compile(r"BENCHMARKS\.md,? [\"']([^\"']+)[\"']")
"""a pointer to a section of the page: BENCHMARKS.md, 'Area title' (or "..."), possibly shortened
to the title's first words."""


def stale_pointers(root: Path, titles: list[str]) -> list[str]:
    """'path: name' of every BENCHMARKS.md pointer in sae/, scripts/, tests/, configs/, docs/ and
    the top-level Markdown files whose quoted name starts no area title (line breaks inside a
    pointer are read as spaces; this file, which must spell the pattern, is left out)."""
    files = [
        p for d in ("sae", "scripts", "tests", "configs", "docs") for p in (root / d).rglob("*")
    ]
    files += [p for p in root.glob("*.md") if p.name != "BENCHMARKS.md"]
    bad = []
    for p in sorted(files):
        if (
            p.suffix not in {".py", ".md", ".yaml"}
            or not p.is_file()
            or p.name == Path(__file__).name
        ):
            continue
        text = re.sub(r"\s*\n\s*(?:#\s*)?", " ", p.read_text(encoding="utf-8"))
        for name in CITED.findall(text):
            if not any(t.startswith(name) for t in titles):
                bad.append(f"{p.relative_to(root)}: {name}")
    return bad


def test_every_pointer_into_the_page_names_an_area():
    """Pins: a docstring or doc pointing at a BENCHMARKS.md section that no longer exists (the old
    page's 'encoder init scale', 'decoder rows from data', 'AuxK', ... sections)."""
    _, areas = mb.load_areas(ROOT)
    assert stale_pointers(ROOT, [a["area"] for a in areas]) == []


def test_stale_pointer_check_can_fail(tmp_path):
    """Pins that the pointer check reports a planted stale name, and accepts a current one split
    over two lines of a docstring and a shortened one."""
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "a.py").write_text(
        '"""Chosen by measurement (BENCHMARKS.md, \'Training\n    defaults\'); see BENCHMARKS.md\n'
        '"decoder rows from data"."""\n',
        encoding="utf-8",
    )
    titles = ["Training defaults: the measurements behind them"]
    assert stale_pointers(tmp_path, titles) == ["sae/a.py: decoder rows from data"]
