"""A folder is ours only if it carries the marker we wrote when we created it (sae/fsutil.py):
every command pointed at a non-empty folder without it stops with one line, before any work, and
touches nothing; killed writes' leftovers are found in the staging folder our marker records,
never by their names (issue 30)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

from sae import fsutil
from sae.cli import main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SMALL = ["--sae.d-sae", "32", "--sae.k", "4", "--store.batch-size", "128"]
SMALL += ["--store.buffer-tokens", "1024", "--eval-tokens", "512", "--quiet"]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _user_folder(folder: Path, files: dict[str, str]) -> dict[str, bytes | None]:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return _snapshot(folder)


def _refused(capsys, argv: list[str], folder: Path) -> str:
    """Run the CLI; it must exit 2 with one line on stderr that names `folder`."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert str(folder) in err and "choose a new or empty folder, or move it away" in err
    return err


def _acts(tmp_path: Path) -> str:
    path = tmp_path / "acts.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.save(path, rng.standard_normal((2048, 16)).astype(np.float32))
    return str(path)


def _sae(folder: Path) -> Path:
    save(SAE(SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2)), folder)
    return folder


# -- the four cases of the issue, through the real command lines --------------------------------


def test_export_saelens_refuses_a_folder_that_merely_holds_a_cfg_json(tmp_path, capsys):
    """Pins: `sae export SAE --format saelens --out DIR` (and `sae.io.save`) deleted any folder
    holding a cfg.json, the user's other files with it."""
    src = _sae(tmp_path / "sae")
    out = tmp_path / "mine"
    out.mkdir()
    before = _user_folder(out, {"cfg.json": '{"my": "settings"}', "thesis.tex": "years of work"})
    err = _refused(capsys, ["export", str(src), "--format", "saelens", "--out", str(out)], out)
    assert "has no .sae-folder.json" in err
    assert _snapshot(out) == before
    with pytest.raises(fsutil.ForeignFolderError):
        _sae(out)
    assert _snapshot(out) == before


def test_train_refuses_a_folder_that_is_not_a_run_before_any_work(tmp_path, capsys):
    """Pins: `sae train --out DIR` into an existing folder that was not a run deleted the user's
    `.old-backup/` (with its files) and `.notes.txt.tmp` as a killed write's leftovers,
    overwrote their `latest` and appended to their `metrics.jsonl`."""
    out = tmp_path / "mine"
    out.mkdir()
    before = _user_folder(
        out,
        {
            ".old-backup/cfg.json": "{}",
            ".old-backup/sae_weights.safetensors": "weights",
            ".notes.txt.tmp": "draft",
            "latest": "my bookmark\n",
            "metrics.jsonl": '{"mine": 1}\n',
        },
    )
    argv = ["train", "--activations", _acts(tmp_path), *SMALL, "--out", str(out)]
    err = _refused(capsys, argv, out)
    assert "as a training run" in err
    assert _snapshot(out) == before
    _refused(capsys, [*argv, "--resume"], out)
    assert _snapshot(out) == before


def test_harvest_refuses_a_folder_that_merely_holds_a_manifest_named_file(
    tiny_models, text_file, tmp_path, capsys
):
    """Pins: `sae harvest --out DIR` (without --overwrite) took any folder holding a file whose
    name starts with `manifest` for a cache, and wrote its shards and its config.yaml over the
    user's."""
    out = tmp_path / "mine"
    out.mkdir()
    before = _user_folder(out, {"manifest-notes.txt": "my list", "config.yaml": "mine: true\n"})
    argv = ["harvest", "--model.name", tiny_models["llama"], "--model.hooks", "resid_post.1",
            "--data.source", text_file, "--data.context-size", "16", "--max-tokens", "300",
            "--quiet", "--out", str(out)]  # fmt: skip
    err = _refused(capsys, argv, out)
    assert "as an activation cache" in err
    assert _snapshot(out) == before
    _refused(capsys, [*argv, "--overwrite"], out)
    assert _snapshot(out) == before


def test_quality_runs_script_refuses_an_out_that_merely_holds_a_config_yaml(tmp_path):
    """Pins: scripts/quality_runs.py deleted any --out holding a config.yaml before training
    into it."""
    out = tmp_path / "mine"
    out.mkdir()
    before = _user_folder(out, {"config.yaml": "mine: true\n", "results.csv": "1,2,3\n"})
    cmd = [sys.executable, str(SCRIPTS / "quality_runs.py"), "syn", "--tokens", "2048",
           "--batch", "256", "--d-sae", "64", "--eval-tokens", "1024", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and str(out) in run.stderr, run.stderr
    assert _snapshot(out) == before


# -- the rule's other edges -----------------------------------------------------------------------


def test_one_kind_never_replaces_another(tmp_path, capsys):
    """Pins: `sae export --format saelens --out <a run>` would delete the run (it holds no
    cfg.json at its top, but any marker-less rule could not tell a run from an export). Each
    folder's marker names its kind; another kind is refused in one line, untouched."""
    src = _sae(tmp_path / "sae")
    run = tmp_path / "run"
    main(["train", "--activations", _acts(tmp_path), *SMALL, "--out", str(run)])
    capsys.readouterr()
    assert fsutil.kind_of(run) == "run"
    before = _snapshot(run)
    err = _refused(capsys, ["export", str(src), "--format", "saelens", "--out", str(run)], run)
    assert "was written by sae as a training run" in err
    _refused(capsys, ["export", str(src), "--format", "dashboard", "--out", str(run)], run)
    _refused(capsys, ["eval", str(src), "--suite", "core", "--out", str(run)], run)
    assert _snapshot(run) == before
    final = next((run / "final").iterdir())
    assert fsutil.kind_of(final) == "sae"
    with pytest.raises(fsutil.ForeignFolderError, match="as an SAE folder"):
        fsutil.remove(run, "sae")
    with pytest.raises(fsutil.ForeignFolderError, match="as a training run"):
        fsutil.remove(final, "run")
    assert _snapshot(run) == before


def test_a_copied_folder_keeps_its_marker_and_stays_ours(tmp_path, capsys):
    """The marker travels with a copy: an SAE folder copied elsewhere is still replaced by a
    re-export, and still loads in SAELens' layout (the marker is one extra small file)."""
    src = _sae(tmp_path / "sae")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    main(["export", str(src), "--format", "saelens", "--out", str(copy)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(copy)
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [fsutil.MARKER, "README.md", "cfg.json", "sae_weights.safetensors"]
    )
    assert json.loads((copy / fsutil.MARKER).read_text())["kind"] == "sae"


def test_resume_clears_only_what_killed_writes_recorded(tmp_path, capsys):
    """Pins: a resumed run found killed writes' leftovers by their names, so a user's
    `.notes.txt.tmp`, `.tmp-photos/` or `.old-backup/` inside the run folder was deleted with
    them. Now only the staging folder the run's marker records is emptied."""
    run = tmp_path / "run"
    argv = ["train", "--activations", _acts(tmp_path), *SMALL, "--out", str(run)]
    main([*argv, "--checkpoint-every", "512"])
    capsys.readouterr()
    user = {".notes.txt.tmp": "draft", ".tmp-photos/a.jpg": "photo", ".old-backup/cfg.json": "{}"}
    _user_folder(run, user)
    killed = run / fsutil.STAGING / "000000001024.k1ll3d" / "new"  # a checkpoint cut short
    killed.mkdir(parents=True)
    (killed / "trainer.json").write_text("{")
    main([*argv, "--checkpoint-every", "512", "--resume"])
    capsys.readouterr()
    assert not (run / fsutil.STAGING).exists()
    assert {n: (run / n).read_text() for n in user} == user


def test_a_write_outside_our_folders_stages_beside_its_target_under_a_marker(tmp_path):
    """Where no folder of ours is above a target (`sae.io.save` into a user's folder), a write
    stages in a folder beside it whose marker names the target; a killed write's staging folder
    is removed by the next write to that name, found by that marker: a user's folder of the same
    look, or a staging folder for another name, stays."""
    killed = tmp_path / ".sae.sae-tmp-k1ll3d"  # what a write of tmp_path/sae killed midway left
    fsutil._write_marker(killed, "staging", **{"for": "sae"})
    (killed / "new").mkdir()
    (killed / "new" / "sae_weights.safetensors").write_text("half")
    other = tmp_path / ".other.sae-tmp-k1ll3d"
    fsutil._write_marker(other, "staging", **{"for": "other"})
    mine = tmp_path / ".sae.sae-tmp-mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _sae(tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, mine.name, "sae"])
    assert (mine / "notes.txt").read_text() == "mine"


def test_an_object_store_cache_follows_the_same_rule(tiny_models, text_file, tmp_path, capsys):
    """Pins: on an fsspec store (memory:// here, s3:// alike) a prefix was taken for a cache by
    a manifest object's `format` field, and `--overwrite` deleted the prefix. Now the marker
    object decides: a harvest writes one, resumes and overwrites only a prefix that has it,
    and refuses another kind's or a foreign prefix in one line, untouched."""
    fs = fsspec.filesystem("memory")
    argv = ["harvest", "--model.name", tiny_models["llama"], "--model.hooks", "resid_post.1",
            "--data.source", text_file, "--data.context-size", "16", "--max-tokens", "300",
            "--quiet"]  # fmt: skip
    url = "memory://bucket30/cache"
    main([*argv, "--out", url])
    assert capsys.readouterr().out.strip().splitlines()[-1] == url
    assert fsutil.kind_of("/bucket30/cache", fs) == "cache"
    main([*argv, "--out", url, "--overwrite"])
    capsys.readouterr()
    assert json.loads(fs.cat_file("/bucket30/cache/manifest.json"))["complete"]

    fs.pipe_file("/bucket30/theirs/manifest.json", b'{"format": "sae-activation-cache"}')
    fs.pipe_file("/bucket30/run/.sae-folder.json", b'{"written_by": "sae", "kind": "run"}')
    fs.pipe_file("/bucket30/run/metrics.jsonl", b"{}\n")
    for prefix, why in (("theirs", "has no .sae-folder.json"), ("run", "as a training run")):
        for extra in ([], ["--overwrite"]):
            err = _refused(capsys, [*argv, "--out", f"memory://bucket30/{prefix}", *extra], prefix)
            assert why in err
    assert fs.cat_file("/bucket30/theirs/manifest.json") == b'{"format": "sae-activation-cache"}'
    assert fs.cat_file("/bucket30/run/metrics.jsonl") == b"{}\n"


def test_a_claim_cut_short_leaves_a_folder_that_is_still_claimable(tmp_path):
    """A kill while the marker itself was being written leaves a folder holding only an empty
    (or partial) marker: that folder has nothing to lose and is claimed again; the same file
    beside anything else is not evidence enough."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / fsutil.MARKER).write_text('{"written_by": "sa')
    fsutil.claim(folder, "report")
    assert fsutil.kind_of(folder) == "report"
    (folder / fsutil.MARKER).write_text("")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(fsutil.ForeignFolderError, match="has no .sae-folder.json"):
        fsutil.claim(folder, "report")
    assert (folder / "notes.txt").read_text() == "mine"


# -- the rule cannot erode ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    ("shutil", "rmtree"), ("shutil", "move"), ("os", "remove"), ("os", "unlink"),
    ("os", "rmdir"), ("os", "removedirs"), ("os", "replace"), ("os", "rename"), ("os", "renames"),
}  # fmt: skip
"""module functions that delete, replace or rename; outside sae/fsutil.py they are refused."""
FORBIDDEN_METHODS = {"unlink", "rmdir", "rename", "rm", "rm_file", "rmtree"}
"""methods that delete or rename (pathlib's, fsspec's) whatever their receiver."""
MUTATORS = {"claim", "remove", "clear_staging", "atomic_folder", "replace_dir", "open_append"}
"""fsutil's functions that create, replace, delete or append under its ownership check."""


def _python_files() -> list[Path]:
    return sorted([*(REPO / "sae").rglob("*.py"), *(REPO / "scripts").rglob("*.py")])


def _violations(path: Path) -> list[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(REPO)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "shutil"):
            found += [
                f"{where}:{node.lineno} imports {node.module}.{a.name}"
                for a in node.names
                if (node.module, a.name) in FORBIDDEN
            ]
        if isinstance(node, ast.Attribute) and node.attr == "O_APPEND":
            found.append(f"{where}:{node.lineno} opens with O_APPEND")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute):
            base = f.value.id if isinstance(f.value, ast.Name) else None
            if (base, f.attr) in FORBIDDEN or f.attr in FORBIDDEN_METHODS:
                found.append(f"{where}:{node.lineno} calls .{f.attr}()")
            # Path.replace(target): one argument (str.replace takes two, dataclasses.replace is
            # called on the module)
            if f.attr == "replace" and len(node.args) == 1 and not node.keywords:
                if base != "dataclasses":
                    found.append(f"{where}:{node.lineno} calls .replace(target)")
        mode = None
        is_open = (isinstance(f, ast.Name) and f.id == "open") or (
            isinstance(f, ast.Attribute) and f.attr == "open"
        )
        if is_open:
            index = 1 if isinstance(f, ast.Name) else 0  # open(path, mode) / Path.open(mode)
            if len(node.args) > index:
                mode = node.args[index]
            mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "a" in mode.value:
            found.append(f"{where}:{node.lineno} opens in append mode")
    return found


def test_only_fsutil_deletes_replaces_or_appends():
    """Pins the rule's one owner (issue 30): outside sae/fsutil.py no module of sae/ or scripts/
    calls shutil.rmtree/move, os.remove/unlink/rmdir/replace/rename, Path.unlink/rmdir/rename/
    replace, fsspec's rm, or opens a file for appending; each goes through fsutil, which checks
    the folder's marker first. (The code before had 26 such calls outside fsutil.)"""
    found = [v for p in _python_files() if p != REPO / "sae" / "fsutil.py" for v in _violations(p)]
    assert not found, "\n".join(found)


def _mutator_modules() -> set[str]:
    """Modules of sae/ and scripts/ that call fsutil's ownership-checked mutators."""
    import ast

    out = set()
    for path in _python_files():
        if path.name == "fsutil.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                base = (
                    f.value.id
                    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    else None
                )
                if name in MUTATORS and base in (None, "fsutil"):
                    out.add(str(path.relative_to(REPO)))
    return out


def test_architecture_lists_every_place_that_deletes_replaces_or_appends():
    """The "Folders we own" section of ARCHITECTURE.md names every module that deletes, replaces a
    folder or appends (through fsutil): a new call site without a line there fails here, and so
    does a line for a module that no longer has one."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Folders we own", 1)[1].split("\n## ", 1)[0]
    import re

    listed = set(re.findall(r"^- `((?:sae|scripts)/[\w/]+\.py)`", section, re.MULTILINE))
    assert listed - {"sae/fsutil.py"} == _mutator_modules()


def test_shell_scripts_delete_only_the_folders_they_made():
    """Pins the same rule for scripts/*.sh (issue 30): scripts/bench_smollm2.sh began with
    `rm -rf "$OUT/run"` on a folder the user named, which deleted whatever was there. A shell
    script may `rm` only a variable it set from `mktemp` itself; everything else goes through sae
    (which refuses a folder that is not its own)."""
    found = []
    for path in sorted(SCRIPTS.glob("*.sh")):
        text = path.read_text(encoding="utf-8")
        made = set(re.findall(r"^\s*(\w+)=\$\(mktemp\b", text, re.MULTILINE))
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for target in re.findall(r"\brm\s+(?:-\w+\s+)*(\S+)", code):
                var = re.fullmatch(r"[\"']*\$\{?(\w+)\}?[\"']*", target)
                if var is None or var.group(1) not in made:
                    found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
