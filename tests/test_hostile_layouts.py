"""Issue 30 item 4: every SAE layout checks its files before they cost anything. A 2 KB folder
whose config claims huge shapes built an SAE of the claimed size (gigabytes) before comparing it
with the weights; sparsify and dictionary_learning folders loaded NaN weights silently and
ignored the sizes their configs declare. Each case is one line (exit 2) and no large
allocation."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import sae as sae_pkg
from sae.cli import main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

D, S = 8, 16
BIG_IN, BIG_SAE = 1024, 131_072
"""a claim of 2 x 512 MiB of float32 weights, from a folder of about 2 KB."""


def _ours(folder, **claim):
    """Our layout, its cfg.json's sae_config edited to `claim`."""
    save(SAE(SAEConfig(architecture="topk", d_in=D, d_sae=S, k=2)), folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["sae_config"].update(claim)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _sparsify(folder, cfg=None, **tensors):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    state = {
        "encoder.weight": torch.randn(S, D, generator=g),
        "encoder.bias": torch.zeros(S),
        "W_dec": torch.randn(S, D, generator=g),
        "b_dec": torch.zeros(D),
    }
    save_file(state | tensors, str(folder / "sae.safetensors"))
    raw = {"activation": "topk", "k": 2, "expansion_factor": 2, "num_latents": 0, "d_in": D}
    (folder / "cfg.json").write_text(json.dumps(raw | (cfg or {})))


def _dictionary_learning(folder, trainer=None, **tensors):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    state = {
        "encoder.weight": torch.randn(S, D, generator=g),
        "encoder.bias": torch.zeros(S),
        "decoder.weight": torch.randn(D, S, generator=g),
        "b_dec": torch.zeros(D),
        "k": torch.tensor(2),
    }
    torch.save(state | tensors, folder / "ae.pt")
    raw = {"dict_class": "AutoEncoderTopK", "activation_dim": D, "dict_size": S, "k": 2}
    (folder / "config.json").write_text(json.dumps({"trainer": raw | (trainer or {})}))


def _one_line_error(folder, capsys, tmp_path) -> str:
    """`sae eval FOLDER` fails with one line on stderr, exit 2, nothing written."""
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(folder), "--suite", "core", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not out.exists()
    return err


_PEAK = """
import json, resource, sys
import sae
from pathlib import Path
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    sae.load(Path(sys.argv[1]))
    err = None
except Exception as e:
    err = f"{type(e).__name__}: {e}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": err, "peak_mb": (peak - base) / 1024}))
"""


def _expanded(*shape):
    """A view of one stored zero that claims `shape`: torch.save keeps the one value."""
    return torch.zeros(1).expand(*shape)


@pytest.mark.parametrize(
    "layout, make, message",
    [
        (
            "ours",
            lambda f: _ours(f, d_in=BIG_IN, d_sae=BIG_SAE),
            f"size mismatch for W_enc: the file holds \\[{D}, {S}\\], the config \\(d_in={BIG_IN}",
        ),
        (
            "dictionary_learning",
            lambda f: _dictionary_learning(
                f,
                {"activation_dim": BIG_IN, "dict_size": BIG_SAE},
                **{
                    "encoder.weight": _expanded(BIG_SAE, BIG_IN),
                    "encoder.bias": _expanded(BIG_SAE),
                    "decoder.weight": _expanded(BIG_IN, BIG_SAE),
                    "b_dec": _expanded(BIG_IN),
                },
            ),  # fmt: skip
            "ae.pt: encoder.weight claims shape \\[131072, 1024\\] .* the file stores only 1;",
        ),
    ],
)
def test_claimed_shapes_are_refused_before_they_are_allocated(tmp_path, layout, make, message):
    """Issue 30 item 4: a ~2 KB folder claiming 1 GiB of weights cost its claim in memory
    before it was refused (ours: the SAE was built from cfg.json; dictionary_learning: the
    stored views were copied whole). The peak RSS of the load, in a fresh interpreter, stays
    under 300 MB over its baseline and the error is one line naming the file and tensor."""
    folder = tmp_path / layout
    make(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 4096, size
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(folder)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["peak_mb"] < 300, got
    assert got["error"] and "\n" not in got["error"], got
    assert __import__("re").search(message, got["error"]), got


def test_absurd_claimed_sizes_are_one_line(tmp_path, capsys):
    """An sae_config claiming 100000 x 1000000 (400 GB) was sent to the allocator (refused there
    only because the machine lacks the memory); now it is compared with the weights first."""
    _ours(tmp_path / "ours", d_in=100_000, d_sae=1_000_000)
    err = _one_line_error(tmp_path / "ours", capsys, tmp_path)
    assert "size mismatch for W_enc: the file holds [8, 16]" in err, err


def test_declared_sizes_must_match_the_weights(tmp_path):
    """sparsify's d_in / num_latents, SAELens's d_in / d_sae and dictionary_learning's
    activation_dim / dict_size were never compared with the weights: a folder whose config says
    one size and whose weights hold another loaded as the weights' size, silently. The same
    folders without the damage still load, at the sizes their weights hold."""
    _sparsify(tmp_path / "sp_d_in", {"d_in": 100_000})
    _sparsify(tmp_path / "sp_latents", {"num_latents": 1_000_000})
    _sparsify(tmp_path / "sp_factor", {"expansion_factor": 64})
    _dictionary_learning(tmp_path / "dl", {"dict_size": 1_000_000})
    saelens = tmp_path / "saelens"
    save(SAE(SAEConfig(architecture="topk", d_in=D, d_sae=S, k=2)), saelens)
    cfg = json.loads((saelens / "cfg.json").read_text())
    del cfg["sae_config"]
    cfg["d_sae"] = 1_000_000
    (saelens / "cfg.json").write_text(json.dumps(cfg))
    cases = {
        "sp_d_in": "cfg.json declares d_in=100000 but .*encoder.weight \\[16, 8\\], i.e. d_in=8",
        "sp_latents": "declares num_latents=1000000 but .* i.e. num_latents=16",
        "sp_factor": "declares num_latents=512 but .* i.e. num_latents=16",
        "dl": "config.json declares dict_size=1000000 but .*ae.pt holds W_enc \\[8, 16\\]",
        "saelens": "cfg.json declares d_sae=1000000 but .*W_enc \\[8, 16\\] and W_dec \\[16, 8\\]",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            sae_pkg.load(tmp_path / name)
    _sparsify(tmp_path / "sp")
    _dictionary_learning(tmp_path / "dl_good")
    _ours(tmp_path / "ours")
    for name in ("sp", "dl_good", "ours"):
        model = sae_pkg.load(tmp_path / name)
        assert (model.cfg.d_in, model.cfg.d_sae) == (D, S), name


@pytest.mark.parametrize(
    "layout, make, message",
    [
        (
            "sparsify NaN decoder",
            lambda f: _sparsify(f, W_dec=torch.full((S, D), float("nan"))),
            "sae.safetensors: W_dec holds 128 NaN or infinite values",
        ),
        (
            "sparsify infinite bias",
            lambda f: _sparsify(f, **{"encoder.bias": torch.full((S,), float("inf"))}),
            "sae.safetensors: encoder.bias holds 16 NaN or infinite values",
        ),
        (
            "dictionary_learning NaN encoder",
            lambda f: _dictionary_learning(
                f, **{"encoder.weight": torch.full((S, D), float("nan"))}
            ),
            "ae.pt: encoder.weight holds 128 NaN or infinite values",
        ),
        (
            "dictionary_learning infinite bias",
            lambda f: _dictionary_learning(f, b_dec=torch.full((D,), float("-inf"))),
            "ae.pt: b_dec holds 8 NaN or infinite values",
        ),
    ],
)
def test_non_finite_weights_are_refused_in_every_layout(tmp_path, capsys, layout, make, message):
    """Issue 30 item 4: sparsify and dictionary_learning folders with NaN or infinite weights
    loaded silently (only the SAELens layout was checked); now one rule (validate.check_tensors)
    refuses them in one line naming the file and the tensor."""
    folder = tmp_path / "bad"
    make(folder)
    err = _one_line_error(folder, capsys, tmp_path)
    assert message in err, err


def test_compressed_torch_archive_is_refused_unread(tmp_path, monkeypatch):
    """torch.save never compresses its records; an ae.pt whose records expand past the file's
    size (a zip bomb: 1 KB can hold 1 MB of zeros, 1 MB a gigabyte) is refused before
    torch.load reads it."""
    folder = tmp_path / "bomb"
    _dictionary_learning(folder, **{"encoder.weight": torch.zeros(S, D)})
    plain = folder / "ae.pt"
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        for info in zin.infolist():
            z.writestr(info.filename, zin.read(info.filename))
        z.writestr("archive/data/pad", bytes(100_000))
    packed.replace(plain)
    read = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: read.append(a) or {})
    with pytest.raises(ValueError, match="ae.pt holds records that expand to .* torch.save never"):
        sae_pkg.load(folder)
    assert not read
