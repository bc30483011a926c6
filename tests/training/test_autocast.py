"""`autocast: auto | true | false` (issue 27): bf16 autocast of the SAE step turns on exactly where
`model.dtype: auto` picks bfloat16, the resolved choice is saved and kept on resume, and a step
under autocast trains SAEs as good as float32 ones while weights, Adam moments and the loss stay
float32.

conftest.py switches the CPU probes off for the session, so `auto` is off in every other test
whatever the machine; each test here sets the probe it needs (both ways), so all pass on any CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.cpu
import yaml

import sae.config.hardware
from sae.config import ConfigError
from sae.config.parse import load_yaml, parse, save_yaml
from sae.config.schema import DataConfig, ModelConfig, StoreConfig, TrainConfig
from sae.fsutil import claim
from sae.model.sae import SAEConfig
from sae.training.checkpoint import check_run_folder, resolve_autocast
from sae.training.train import Trainer

PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    """torch.cpu answers for a CPU with or without AVX512-BF16 and AMX."""
    monkeypatch.setattr(sae.config.hardware, "CPU_BF16_CHECKS", PROBES)
    monkeypatch.setattr(torch.cpu, PROBES[0], lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, PROBES[1], lambda: amx)


def _gaussian(tmp_path, rows: int, held: int = 0, d: int = 32) -> tuple[str, str]:
    """Files of training and held-out rows from one correlated Gaussian (variance 1/i along the
    i-th of d random orthogonal directions, offset from the origin): a smooth problem whose FVU
    no planted structure decides."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    x = (torch.randn(rows + held, d, generator=g) / torch.arange(1, d + 1) ** 0.5) @ basis + 1.0
    np.save(tmp_path / "acts.npy", x[:rows].numpy())
    np.save(tmp_path / "held.npy", x[rows:].numpy())
    return str(tmp_path / "acts.npy"), str(tmp_path / "held.npy")


def _small(tmp_path, acts: str, out: str, **kw) -> TrainConfig:
    base = dict(
        activations=acts,
        sae=SAEConfig(d_in=None, d_sae=64, k=4),
        store=StoreConfig(buffer_tokens=1024, batch_size=256, normalize=True),
        total_tokens=1024,
        eval_tokens=256,
        model=ModelConfig(device="cpu", dtype="float32"),  # the probe decides autocast only
        out=str(tmp_path / out),
        quiet=True,
    )
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_auto_is_on_exactly_where_model_dtype_auto_picks_bfloat16(
    monkeypatch, tmp_path, avx512_bf16, amx, expected
):
    """Known answer (issue 27 item 1): an AVX2 or plain AVX512 CPU emulates bf16 (slower than
    float32), so `auto` is off there; AVX512-BF16 or AMX multiply it natively, so it is on, the
    same probe that sets `model.dtype: auto`. An explicit choice is kept whatever the CPU."""
    _cpu(monkeypatch, avx512_bf16, amx)
    cfg = TrainConfig(model=ModelConfig(device="cpu"), out=str(tmp_path / "run"))
    assert cfg.autocast == "auto"  # resolved when training starts, with the final device
    assert resolve_autocast(cfg).autocast is expected
    assert (cfg.model.dtype == "bfloat16") is expected
    for explicit in (True, False):
        kept = TrainConfig(model=ModelConfig(device="cpu"), autocast=explicit, out=cfg.out)
        assert resolve_autocast(kept).autocast is explicit


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), False), ((8, 0), True)])
def test_auto_on_cuda_needs_ampere(monkeypatch, tmp_path, capability, expected):
    """Known answer: bf16 tensor cores start at compute capability 8.0; a T4 (7.5) keeps the
    float32 step. The device decides, not the CPU beside it (here one without bf16 units)."""
    _cpu(monkeypatch, False, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    for device in ("cuda", "cuda:1", "auto"):
        cfg = TrainConfig(model=ModelConfig(device=device), out=str(tmp_path / "run"))
        assert resolve_autocast(cfg).autocast is expected
    cpu = TrainConfig(model=ModelConfig(device="cpu"), out=str(tmp_path / "run"))
    assert resolve_autocast(cpu).autocast is False


@pytest.mark.parametrize("native", [True, False])
def test_resolved_choice_runs_and_is_written_to_config_yaml_and_metadata(
    monkeypatch, tmp_path, native
):
    """Pins the resolution point: config.yaml and the SAE's cfg.json say true or false, never
    'auto' (a resume or a reader on another machine would otherwise decide anew), and the step
    really runs under autocast exactly when the choice is true. This machine has AVX512-BF16,
    so `true` is what it writes; the probe is set both ways so the test holds on any CPU."""
    _cpu(monkeypatch, native, False)
    acts, _ = _gaussian(tmp_path, 2048)
    tr = Trainer(_small(tmp_path, acts, "run"))
    seen = []
    forward = tr.members[0].loss

    def spy(*args):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(*args)

    tr.members[0].loss = spy
    final = tr.fit()[0]
    assert seen and set(seen) == {native}
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["autocast"] is native
    meta = json.loads((final / "cfg.json").read_text())["metadata"]
    assert meta["autocast"] is native


def test_resume_keeps_the_saved_choice(monkeypatch, tmp_path):
    """Issue 27 item 1: a run resumed on other hardware keeps the choice it started with, so its
    numerics do not change mid-run: `auto` under --resume reads the saved config.yaml, and the
    `sae train --resume --out DIR` path builds on that file. config.yaml files written before
    `auto` existed (`autocast: false`) still load and resume."""
    acts, _ = _gaussian(tmp_path, 2048)
    _cpu(monkeypatch, True, False)  # started on a bf16-native machine
    claim(tmp_path / "run", "run")  # the run folder as `sae train` makes it (sae/fsutil.py)
    save_yaml(resolve_autocast(_small(tmp_path, acts, "run")), tmp_path / "run" / "config.yaml")
    _cpu(monkeypatch, False, False)  # resumed on one without bf16 units
    resumed = resolve_autocast(_small(tmp_path, acts, "run", resume=True))
    assert resumed.autocast is True
    check_run_folder(resumed)  # no "differs from the saved run" refusal
    assert load_yaml(TrainConfig, tmp_path / "run" / "config.yaml").autocast is True

    old = _small(tmp_path, acts, "old", autocast=False)
    claim(tmp_path / "old", "run")
    save_yaml(old, tmp_path / "old" / "config.yaml")  # what the code before issue 27 wrote
    assert "autocast: false" in (tmp_path / "old" / "config.yaml").read_text()
    _cpu(monkeypatch, True, False)
    resumed = resolve_autocast(_small(tmp_path, acts, "old", resume=True))
    assert resumed.autocast is False
    check_run_folder(resumed)
    assert load_yaml(TrainConfig, tmp_path / "old" / "config.yaml").autocast is False


def test_flag_and_yaml_forms(tmp_path):
    """The three values from flags and YAML alike; the default is `auto`."""
    forms = {
        (): "auto",
        ("--autocast", "true", "--compile"): True,
        ("--autocast", "true"): True,
        ("--autocast", "false"): False,
        ("--autocast", "auto"): "auto",
    }
    for argv, want in forms.items():
        assert parse(TrainConfig, list(argv), "sae train").autocast == want, argv
    for text, want in [("auto", "auto"), ("true", True), ("false", False)]:
        (tmp_path / "c.yaml").write_text(f"autocast: {text}\n")
        assert load_yaml(TrainConfig, tmp_path / "c.yaml").autocast == want, text


def test_bad_value_is_one_sentence(tmp_path):
    """Bad input names the value and the valid ones, from Python, YAML and the command line,
    before any work."""
    valid = r"'auto', true or false"
    with pytest.raises(ConfigError, match=rf"^autocast='fast' is not one of {valid}\.$"):
        TrainConfig(autocast="fast")
    with pytest.raises(ConfigError, match=rf"^autocast=1 is not one of {valid}\.$"):
        TrainConfig(autocast=1)
    (tmp_path / "c.yaml").write_text("autocast: fast\n")
    with pytest.raises(
        ConfigError, match=r"^autocast='fast' in .*c.yaml must be auto, true or false\.$"
    ):
        load_yaml(TrainConfig, tmp_path / "c.yaml")
    with pytest.raises(
        ConfigError, match=r"^autocast='fast' is not one of 'auto', 'true', 'false'\.$"
    ):
        parse(TrainConfig, ["--autocast", "fast"], "sae train")


def _mean_fvu(cfg: TrainConfig) -> float:
    """Train `cfg`; check that every step ran under autocast exactly when `cfg.autocast` says and
    that its loss, every weight and every Adam moment are float32; return the mean held-out FVU
    of its SAEs."""
    tr = Trainer(cfg)
    losses = []
    for m in tr.members:
        m.loss = _recording(m.loss, losses)
    finals = tr.fit()
    assert {(loss.dtype, on) for loss, on in losses} == {(torch.float32, cfg.autocast)}
    for m in tr.members:
        assert {p.dtype for p in m.sae.parameters()} == {torch.float32}
        moments = [t for s in m.opt.state.values() for t in s.values() if t.dim() > 0]
        assert moments and {t.dtype for t in moments} == {torch.float32}
    fvu = [json.loads((f / "train_summary.json").read_text())["fvu"] for f in finals]
    return sum(fvu) / len(fvu)


def _recording(forward, losses: list):
    """`forward` that also keeps each step's loss and whether autocast was on."""

    def step(*args):
        out = forward(*args)
        losses.append((out.loss, torch.is_autocast_enabled("cpu")))
        return out

    return step


ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
MEMBERS = 8
"""SAEs per run (a sweep of identical items, each with its own initialisation). One tiny SAE's
held-out FVU moves by up to 0.005 between two float32 runs that differ only in rounding, since a
few steps of Adam on d=32 amplify any perturbation; the mean of eight moves by at most 0.0013
(measured over three seeds per architecture, float32 against autocast)."""


@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_trains_as_well_as_float32(tmp_path, one_torch_thread, arch):
    """Issue 27 item 2: with autocast forced on (whatever the CPU: slow where bf16 is emulated,
    but correct) the held-out FVU is within 0.002 of the float32 run's on a fixed small run, for
    every architecture; weights and Adam moments stay float32 and so does every step's loss.
    Scoring is the same float32 code for both."""
    acts, held = _gaussian(tmp_path, 20_480, 16_384)
    fvu = {}
    for autocast in (False, True):
        cfg = _small(
            tmp_path,
            acts,
            f"run-{autocast}",
            autocast=autocast,
            sae=SAEConfig(d_in=None, architecture=arch, d_sae=128, k=8),
            store=StoreConfig(buffer_tokens=2048, batch_size=1024, normalize=True),
            sweep=["k=8"] * MEMBERS,
            total_tokens=10_240,
            eval_activations=held,
            eval_tokens=16_384,
        )
        fvu[autocast] = _mean_fvu(cfg)
    assert fvu[False] < 0.5  # the run learned something: parity of two untrained SAEs is empty
    assert abs(fvu[True] - fvu[False]) <= 0.002, fvu


def test_transcoder_under_autocast_trains_as_well_as_float32(
    tmp_path, tiny_models, one_torch_thread
):
    """Issue 27 item 2 for transcoders (resid_pre.1 -> mlp_out.1 of the tiny GPT-2, live, the
    only way a transcoder reads two hooks): the same parity as the autoencoders. The mean of
    eight moved by at most 0.0013 over three seeds here; this is seed 0."""
    from conftest import CORPUS

    text = tmp_path / "docs.jsonl"
    text.write_text(
        "".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i, t in enumerate(CORPUS * 64))
    )
    fvu = {}
    for autocast in (False, True):
        cfg = TrainConfig(
            model=ModelConfig(
                name=tiny_models["gpt2"], hooks=["resid_pre.1"], batch_windows=8, device="cpu"
            ),
            data=DataConfig(source=str(text), context_size=16, eval_every=5),
            store=StoreConfig(buffer_tokens=2048, batch_size=512, normalize=True),
            sae=SAEConfig(d_in=None, d_sae=128, k=8),
            target_hook="mlp_out.1",
            sweep=["k=8"] * MEMBERS,
            total_tokens=10_240,
            autocast=autocast,
            out=str(tmp_path / f"run-{autocast}"),
            quiet=True,
        )
        fvu[autocast] = _mean_fvu(cfg)
    assert fvu[False] < 0.5
    assert abs(fvu[True] - fvu[False]) <= 0.002, fvu
