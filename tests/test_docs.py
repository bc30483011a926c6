"""The docs a clone of the repository can follow: code cites docs/methods.md (with anchors that
exist) or the paper, never a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = "docs/methods.md"
OUTSIDE = re.compile(r"\bMATH\b|\b(?:STYLE|DESIGN)\.md\b|shared/")
"""working references that are not part of the repository (MATH.md, STYLE.md, DESIGN.md and
anything under ../shared/)."""
CITATION = re.compile(r"docs/methods\.md#(\w[^\s)`'\",;:\]]*)")
"""a citation with its anchor; `docs/methods.md#<anchor>` (a placeholder in prose) is not one."""
CODE_DIRS = ("sae", "scripts", "tests")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt"}


def github_slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped (letters, digits,
    '_', '-' and spaces kept), spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2, ... for repeated headings; fenced code
    blocks are skipped (a '#' there is not a heading)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _files(root: Path, dirs: tuple[str, ...]) -> list[Path]:
    """Text files under `dirs` and the top-level Markdown files; this test file, which must spell
    the patterns it looks for, is left out."""
    found = [p for d in dirs for p in (root / d).rglob("*") if p.suffix in SUFFIXES]
    found += root.glob("*.md")
    me = Path(__file__).resolve()
    return sorted(
        p for p in found if p.is_file() and "__pycache__" not in p.parts and p.resolve() != me
    )


def outside_citations(root: Path, dirs: tuple[str, ...] = CODE_DIRS + ("configs",)) -> list[str]:
    """'path:line: text' of every line under `dirs` (and of the top-level Markdown files) that
    cites MATH.md or a shared/ path."""
    hits = []
    for p in _files(root, dirs):
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{p.relative_to(root)}:{i}: {line.strip()}")
    return hits


def dangling_anchors(root: Path, dirs: tuple[str, ...] = CODE_DIRS) -> list[str]:
    """'path:line: #anchor' of every docs/methods.md#anchor citation with no such heading."""
    methods = root / METHODS
    have = anchors(methods.read_text(encoding="utf-8")) if methods.is_file() else set()
    bad = []
    for p in _files(root, dirs):
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            for anchor in CITATION.findall(line):
                if anchor.rstrip(".") not in have:
                    bad.append(f"{p.relative_to(root)}:{i}: #{anchor}")
    return bad


def test_repository_cites_nothing_outside_itself():
    """Pins: a comment or doc citing MATH.md or ../shared/, files a clone does not have (sae/,
    scripts/, tests/, configs/ and the top-level Markdown files)."""
    assert outside_citations(ROOT) == []


def test_every_cited_methods_anchor_exists():
    """Pins: a `docs/methods.md#anchor` citation whose heading was renamed or never written."""
    assert (ROOT / METHODS).is_file()
    assert dangling_anchors(ROOT) == []


def test_methods_internal_links_resolve():
    """Pins: a `(#anchor)` link inside docs/methods.md to a heading that does not exist."""
    text = (ROOT / METHODS).read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links - anchors(text) == set()


def test_methods_has_a_section_for_every_suite():
    """Pins: a suite in `sae eval` whose quantities docs/methods.md does not define."""
    from sae.eval.base import SUITES

    have = anchors((ROOT / METHODS).read_text(encoding="utf-8"))
    missing = [s for s in SUITES if f"{s}-suite" not in have and "core" != s]
    assert missing == []
    assert {"reconstruction-core-suite", "downstream-fidelity-core-suite"} <= have


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("alpha: power-law exponent", "alpha-power-law-exponent"),
        ("rho_PR", "rho_pr"),
        ("Fit window, R2 and drift", "fit-window-r2-and-drift"),
        ("Reconstruction (core suite)", "reconstruction-core-suite"),
        ("Random-projection Hurst test", "random-projection-hurst-test"),
    ],
)
def test_github_slug(heading, slug):
    """Pins the slug rules the anchor check relies on (GitHub keeps '_' and '-', drops the rest)."""
    assert github_slug(heading) == slug


def test_checks_catch_planted_mistakes(tmp_path):
    """Pins that both checks can fail: a planted MATH.md citation, a shared/ path and an anchor
    that no heading has are all reported; a fenced '#' line is not taken for a heading."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "methods.md").write_text(
        "# Methods\n\n## FVU\n\n```\n# not a heading\n```\n\n## FVU\n", encoding="utf-8"
    )
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "a.py").write_text(
        '"""See MATH.md §A.4."""\n# from ../shared/x\nx = 1  # docs/methods.md#fvu, STYLE.md habit 8\n',
        encoding="utf-8",
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text(
        "# docs/methods.md#fvu-1 and docs/methods.md#not-a-heading\n", encoding="utf-8"
    )
    assert [h.split(":")[1] for h in outside_citations(tmp_path)] == ["1", "2", "3"]
    assert dangling_anchors(tmp_path) == ["tests/t.py:1: #not-a-heading"]
