"""Nothing the package deletes or replaces is anyone else's: `sae harvest --overwrite`, the
checkpoint pruner, the SAE and dashboard folder swaps and the export's OUT all recognise their own
folders (by the marker sae/fsutil.py writes into every folder it creates, issue 30; by manifest,
config or file names before) and refuse anything else in one line, untouched (issue 25.2)."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
import torch

from sae import fsutil
from sae.activations.harvest import harvest
from sae.cli import main
from sae.config.schema import DataConfig, HarvestConfig, ModelConfig
from sae.export.cli import ExportConfig, run_export
from sae.io import save
from sae.model.sae import SAE, SAEConfig
from sae.training import checkpoint as ckpt


def _harvest_cfg(tiny_models, text_file, out, **kw) -> HarvestConfig:
    return HarvestConfig(
        model=ModelConfig(name=tiny_models["llama"], hooks=["resid_post.1"], batch_windows=3),
        data=DataConfig(source=text_file, context_size=16),
        out=str(out),
        shard_tokens=300,
        quiet=True,
        **kw,
    )


def test_overwrite_deletes_only_an_activation_cache(tiny_models, text_file, tmp_path):
    """Pins: `sae harvest --overwrite --out X` used to rmtree X whatever it was (a home folder, a
    bucket prefix). A folder that is not a cache of ours (plain files, or a manifest.json
    without our marker), locally or on an fsspec store, is now one error and every file is still
    there; a cache this package wrote is still replaced."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    other = tmp_path / "other-manifest"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "someone-else"}))
    for out in (home, other):
        with pytest.raises(fsutil.ForeignFolderError, match="as an activation cache") as e:
            harvest(_harvest_cfg(tiny_models, text_file, out, overwrite=True))
        assert "\n" not in str(e.value)
    assert (home / "thesis.tex").read_text() == "years of work"
    assert json.loads((other / "manifest.json").read_text()) == {"format": "someone-else"}

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket25/prefix/data.parquet", b"not ours")
    with pytest.raises(fsutil.ForeignFolderError, match="as an activation cache"):
        harvest(_harvest_cfg(tiny_models, text_file, "memory://bucket25/prefix", overwrite=True))
    assert fs.cat_file("/bucket25/prefix/data.parquet") == b"not ours"

    cache = tmp_path / "cache"
    harvest(_harvest_cfg(tiny_models, text_file, cache, max_tokens=300))
    (cache / "shard_00000.safetensors").write_bytes(b"stale")
    harvest(_harvest_cfg(tiny_models, text_file, cache, max_tokens=300, overwrite=True))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_tokens"] == 300
    assert (cache / "shard_00000.safetensors").read_bytes() != b"stale"


def _parts(value: float) -> dict:
    def save_fn(folder: Path) -> None:
        fsutil.atomic_write_json(folder / "cfg.json", {"value": value})

    return {
        "store_state": {},
        "trainer": {"step": int(value)},
        "saes": {"s": (save_fn, {"w": torch.full((2,), value)})},
    }


def test_checkpoint_pruning_and_swaps_leave_foreign_folders_alone(tmp_path):
    """Pins: the checkpoint pruner deleted every digit-named folder (and `.tmp-*` folder) in the
    run folder, and a checkpoint write replaced an existing folder of its name whatever it held.
    Folders without a checkpoint's marker are now left alone by the pruner, and one in the way of
    a write is one error, untouched; real checkpoints are still pruned to `keep`; a run folder
    that is not ours is refused whole."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(fsutil.ForeignFolderError, match="as a training run"):
        ckpt.write_checkpoint(run, 100, _parts(100.0), keep=2)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    (run / "notes.txt").unlink()
    fsutil.claim(run, "run")
    for name in ("000000000050", ".tmp-photos"):
        (run / name).mkdir()
        (run / name / "keep.txt").write_text("mine")
    for t in (100, 200, 300):
        ckpt.write_checkpoint(run, t, _parts(float(t)), keep=2)
    assert sorted(p.name for p in run.iterdir() if p.name.isdigit()) == [
        "000000000050", "000000000200", "000000000300"
    ]  # fmt: skip
    assert (run / "000000000050" / "keep.txt").is_file()
    assert (run / ".tmp-photos" / "keep.txt").is_file()

    (run / "000000000400").mkdir()
    (run / "000000000400" / "keep.txt").write_text("mine")
    with pytest.raises(fsutil.ForeignFolderError, match="as a checkpoint"):
        ckpt.write_checkpoint(run, 400, _parts(400.0), keep=2)
    assert (run / "000000000400" / "keep.txt").read_text() == "mine"


def test_folder_swaps_replace_only_their_own_kind(tmp_path):
    """Pins: `atomic_folder` swapped out and deleted whatever folder stood at its target. Now the
    target must be absent, empty or carry our marker of the same kind, before anything is
    written; an SAE folder is still replaced by `save`, and never by another kind's write."""
    target = tmp_path / "latents"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(fsutil.ForeignFolderError, match="has no .sae-folder.json"):
        with fsutil.atomic_folder(target, "export"):
            raise AssertionError("the body must not run")
    assert (target / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["latents"]  # no temporary folder left

    sae_dir = tmp_path / "sae"
    a = SAE(SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2))
    save(a, sae_dir)
    save(a, sae_dir)  # an SAE folder is replaced whole, as before
    assert (sae_dir / "cfg.json").is_file()
    with pytest.raises(fsutil.ForeignFolderError, match="written by sae as an SAE folder"):
        with fsutil.atomic_folder(sae_dir, "export"):
            raise AssertionError("the body must not run")
    assert (sae_dir / "cfg.json").is_file()


def test_export_refuses_an_out_that_holds_other_files(tmp_path, capsys):
    """Pins: `sae export --format dashboard|neuronpedia --out X` replaced X/latents whole and
    overwrote index.html in any folder. An OUT (or latents/) without our export marker is one
    error before the records pass, untouched."""
    sae_dir = tmp_path / "sae"
    save(SAE(SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2)), sae_dir)
    out = fsutil.claim(tmp_path / "site", "export")
    (out / "latents").mkdir()
    (out / "latents" / "plan.md").write_text("mine")
    with pytest.raises(fsutil.ForeignFolderError, match="has no .sae-folder.json"):
        run_export(ExportConfig(str(sae_dir), format="dashboard", out=str(out)))
    (out / "latents" / "plan.md").unlink()
    (out / fsutil.MARKER).unlink()
    (out / "index.md").write_text("mine")
    for fmt in ("dashboard", "neuronpedia"):
        with pytest.raises(fsutil.ForeignFolderError, match="as an export"):
            run_export(ExportConfig(str(sae_dir), format=fmt, out=str(out)))
    assert (out / "index.md").read_text() == "mine" and not (out / "report").exists()
    with pytest.raises(SystemExit) as e:  # the CLI prints it as one line, exit code 2
        main(["export", str(sae_dir), "--format", "neuronpedia", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and err.count("\n") == 1
