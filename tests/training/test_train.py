"""`sae train`: end to end on matrix files and tiny live models; exact resume; bad input."""

from __future__ import annotations

import json
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sae
from sae.activations.sources import MatrixSource
from sae.activations.store import ActivationStore
from sae.cli import main
from sae.config import ConfigError
from sae.config.schema import DataConfig, ModelConfig, StoreConfig, TrainConfig
from sae.model.sae import SAEConfig
from sae.model.step import Batch
from sae.training import members
from sae.training.train import Trainer, train


def _planted(tmp_path, n=12_000, d=16, n_feat=48, k=3, seed=0, name="acts.npy"):
    """Sparse combinations of a planted unit dictionary, offset from the origin."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_feat, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_feat, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) * 2 + 0.5
    x = torch.einsum("nk,nkd->nd", coef, dictionary[idx]) + 3.0
    np.save(tmp_path / name, x.numpy())
    return str(tmp_path / name)


def _cfg(tmp_path, acts, out="run", **kw) -> TrainConfig:
    base = dict(
        activations=acts,
        sae=SAEConfig(d_in=None, d_sae=64, k=3),
        store=StoreConfig(buffer_tokens=2048, batch_size=256, normalize=True),
        out=str(tmp_path / out),
        quiet=True,
        log_every=5,
        dead_tokens=2000,
    )
    return TrainConfig(**(base | kw))


def _weights(folder):
    return load_file(str(folder / "sae_weights.safetensors"))


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch):
    """Pins every piece of resume state: params, Adam moments, step, schedule, store, counters."""
    acts = _planted(tmp_path)
    full = train(_cfg(tmp_path, acts, "full", epochs=2))[0]

    real_step = Trainer._step

    def stop_midway(self, m, batch, lr_mult, sparsity):
        real_step(self, m, batch, lr_mult, sparsity)
        if self.step == 57:  # inside the second epoch, not on a checkpoint boundary
            self._stop_signal = 2

    monkeypatch.setattr(Trainer, "_step", stop_midway)
    assert train(_cfg(tmp_path, acts, "cut", epochs=2)) == []
    monkeypatch.setattr(Trainer, "_step", real_step)
    resumed = train(_cfg(tmp_path, acts, "cut", epochs=2, resume=True))[0]
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_trained_sae_reconstructs_raw_activations_and_loads(tmp_path, capsys):
    """Normalisation must be folded: sae.load(folder) works on raw activations."""
    acts = _planted(tmp_path)
    held = _planted(tmp_path, n=3000, seed=0, name="held.npy")  # same dictionary, other draws
    main(
        [
            "train",
            "--activations",
            acts,
            "--eval-activations",
            held,
            "--out",
            str(tmp_path / "cli"),
            "--sae.d-sae",
            "64",
            "--sae.k",
            "3",
            "--store.batch-size",
            "256",
            "--store.buffer-tokens",
            "2048",
            "--epochs",
            "4",
            "--quiet",
        ]
    )
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    model = sae.load(folder)
    x = torch.from_numpy(np.load(held))
    out = model(x)
    fvu = ((x - out.x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    summary = json.loads(open(f"{folder}/train_summary.json").read())
    assert abs(fvu.item() - summary["fvu"]) < 1e-3
    assert summary["fvu"] < 0.5 and summary["eval_tokens"] == 3000  # predicting the mean gives 1
    assert (out.latents != 0).sum(-1).max() <= 3
    cfg = json.loads(open(f"{folder}/cfg.json").read())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 64
    lines = [json.loads(line) for line in open(tmp_path / "cli" / "metrics.jsonl")]
    assert lines and "tokens_per_s" in lines[-1]


def test_sweep_trains_several_saes_on_one_stream(tmp_path):
    acts = _planted(tmp_path)
    finals = train(
        _cfg(tmp_path, acts, sweep=["k=2", "k=6,architecture=batchtopk", "architecture=relu"])
    )
    assert [f.name for f in finals] == [
        "00-activations-topk-64-k2",
        "01-activations-batchtopk-64-k6",
        "02-activations-relu-64",
    ]
    for f in finals:
        assert sae.load(f).cfg.d_sae == 64


def test_live_transcoder_on_tiny_model(tiny_models, text_file, tmp_path):
    """Transcoder: read resid_pre.1, reconstruct mlp_out.1, from live activations."""
    cfg = TrainConfig(
        model=ModelConfig(name=tiny_models["gpt2"], hooks=["resid_pre.1"], batch_windows=4),
        data=DataConfig(source=text_file, context_size=16, eval_every=5),
        store=StoreConfig(buffer_tokens=512, batch_size=128, normalize=True),
        sae=SAEConfig(d_in=None, d_sae=64, k=4),
        target_hook="mlp_out.1",
        out=str(tmp_path / "tc"),
        quiet=True,
    )
    folder = train(cfg)[0]
    loaded = sae.load(folder)
    assert loaded.cfg.d_out == 32
    assert (loaded.cfg.model_name, loaded.cfg.hook_name) == (tiny_models["gpt2"], "resid_pre.1")
    assert loaded.metadata["model_dtype"] == "float32" and "model_revision" in loaded.metadata
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["eval_source"].startswith("held-out windows") and summary["eval_tokens"] > 0


def _screen_off(monkeypatch):
    """NaN rows reach training as a model's own overflow would: the sources' row screen (which
    refuses them in files since issue 30 item 4) is turned off, so the paths behind it run."""
    from sae.activations import sources

    monkeypatch.setattr(sources, "nonfinite_mask", lambda rows: None)
    monkeypatch.setattr(sources, "check_rows_finite", lambda *args: 0)


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    """Pins the skip-and-count path: a few NaN batches are skipped, an (almost) all-NaN run stops with
    a one-line reason after MAX_NONFINITE_STEPS in a row, at the first log line (log_every 5)
    since the count is read there."""
    _screen_off(monkeypatch)
    acts = np.load(_planted(tmp_path))
    acts[8000:8100] = np.nan  # a few poisoned rows after initialisation: their batches are skipped
    np.save(tmp_path / "nan.npy", acts)
    # No normalisation: a NaN in the first chunk would otherwise poison the scale itself.
    trainer = Trainer(
        _cfg(
            tmp_path,
            str(tmp_path / "nan.npy"),
            store=StoreConfig(buffer_tokens=2048, batch_size=256),
        )
    )
    finals = trainer.fit()
    assert finals and 0 < trainer.members[0].skipped_steps < trainer.total_steps
    # Every row NaN but the first (an all-NaN file is refused before training, issue 24).
    allnan = np.full((4000, 16), np.nan, dtype=np.float32)
    allnan[0] = 1.0
    np.save(tmp_path / "allnan.npy", allnan)
    monkeypatch.setattr(members, "MAX_NONFINITE_STEPS", 3)
    with pytest.raises(RuntimeError, match=r"5 non-finite losses in a row by step 5 \(at most 3"):
        train(
            _cfg(
                tmp_path,
                str(tmp_path / "allnan.npy"),
                "dead",
                store=StoreConfig(buffer_tokens=2048, batch_size=256),
            )
        )


def test_nan_rows_in_the_first_chunk_poison_neither_the_scale_nor_the_init(tmp_path, monkeypatch):
    """Issue 24: NaN rows among the first rows (the chunk the normalisation scale is measured on
    and the batch the init reads) made the scale NaN, so every batch was non-finite: the run
    stopped, or, shorter than the skip limit, failed saving with a traceback (`scale=nan ...
    must be > 0`). The scale and the init now read the finite rows: the run ends with finite
    weights, only the NaN rows' batches skipped."""
    _screen_off(monkeypatch)
    acts = np.load(_planted(tmp_path))
    acts[5:8] = np.nan
    np.save(tmp_path / "nan_first.npy", acts)
    trainer = Trainer(_cfg(tmp_path, str(tmp_path / "nan_first.npy")))
    finals = trainer.fit()
    assert finals and np.isfinite(list(trainer.scale.factors.values())).all()
    assert all(torch.isfinite(t).all() for t in _weights(finals[0]).values())
    assert 0 < trainer.members[0].skipped_steps < trainer.total_steps


@pytest.mark.parametrize("fused", [True, False])
def test_a_nonfinite_step_changes_no_weight_and_no_moment(tmp_path, fused):
    """Pins the skip itself, now decided on the device: fused Adam gets the flag as `found_inf`
    (the path every CPU and CUDA run takes), other optimizers ask the host. After one finite
    step, a step whose gradient is NaN leaves the weights, Adam's moments and its step count
    as they were, and counts one skipped step; the next finite step counts none."""
    m = members.Member("m", SAEConfig(d_in=8, d_sae=16, k=2), "h", None, 1e-2, "cpu")
    if not fused:
        m.opt = torch.optim.Adam(m.sae.parameters(), lr=1e-2, fused=False)
    for ok in (True, False, True):
        before = {k: v.clone() for k, v in m.tensors().items()}
        for p in m.sae.parameters():
            p.grad = torch.full_like(p, 0.5 if ok else float("nan"))
        m.optimizer_step(torch.tensor(ok))
        after = m.tensors()
        same = [k for k in before if torch.equal(before[k], after[k])]
        if ok:
            assert {"train.W_enc", "optim.0.exp_avg", "optim.0.step"}.isdisjoint(same), same
        else:
            assert len(same) == len(before), set(before) - set(same)
    assert (m.skipped_steps, int(m.in_a_row), int(m.longest)) == (1, 0, 1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lr": 0.0}, "lr=0.0 must be > 0"),
        ({"sweep": ["kk=3"]}, "'kk=3' must be field=value"),
    ],
)
def test_bad_train_config_fails_at_construction(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, "x.npy", **kw)


def test_bad_inputs_fail_before_training(tmp_path):
    acts = _planted(tmp_path)
    with pytest.raises(ValueError, match="k=64 must be at least 1 and smaller than d_sae=64"):
        SAEConfig(d_in=None, d_sae=64, k=64)
    with pytest.raises(ValueError, match="l1_coefficient=-1"):
        SAEConfig(d_in=None, d_sae=64, architecture="relu", l1_coefficient=-1)
    with pytest.raises(
        ConfigError, match=r"sae.d_in=10 but the activations at 'activations' have width 16"
    ):
        Trainer(_cfg(tmp_path, acts, sae=SAEConfig(d_in=10, d_sae=64, k=3)))
    train(_cfg(tmp_path, acts, "once"))
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Trainer(_cfg(tmp_path, acts, "once"))
    with pytest.raises(ConfigError, match=r"sae.d_sae=32 differs from the saved run's 64"):
        Trainer(_cfg(tmp_path, acts, "once", resume=True, sae=SAEConfig(d_in=None, d_sae=32, k=3)))
    assert Trainer(_cfg(tmp_path, acts, "never", resume=True)).step == 0  # nothing yet: start
    with pytest.raises(SystemExit):
        main(["train", "--activations", acts, "--sae.architecture", "sparse"])


def test_synthetic_ground_truth_training_records_the_generator(tmp_path):
    """`--activations synthetic`: trains on synthetic data; metadata lets eval rebuild the truth."""
    from sae.analysis.matching import compare_dictionaries
    from sae.analysis.synthetic import SyntheticConfig, SyntheticData

    syn = SyntheticConfig(d_in=32, n_features=48, mean_active=3.0, seed=3)
    cfg = TrainConfig(
        activations="synthetic",
        synthetic=syn,
        total_tokens=300_000,
        eval_tokens=8192,
        sae=SAEConfig(d_sae=96, k=3),
        store=StoreConfig(buffer_tokens=16384, batch_size=1024, normalize=True),
        out=str(tmp_path / "syn"),
        quiet=True,
        lr=3e-3,
    )
    folder = train(cfg)[0]
    loaded = sae.load(folder)
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    truth = SyntheticData(SyntheticConfig(**meta["synthetic"])).dictionary_ND
    match = compare_dictionaries(truth, loaded.W_dec.detach())
    assert match.mmcs > 0.9, match.mmcs
    summary = json.loads((folder / "train_summary.json").read_text())
    assert (
        summary["eval_source"].startswith("held-out synthetic") and summary["eval_tokens"] == 8192
    )


def test_default_dead_window_is_a_100th_of_the_run(tmp_path):
    """Pins: the default dead window was a fixed 250k tokens, half of a 500k-token run, so AuxK
    reached dead latents too late to revive them (synthetic recovery 83% -> 87-88% with a 100th;
    the built-in run's held-out dead 3.6% at a 25th -> 0.7%). The window is a 100th of the run's
    tokens, at least one batch, at most Gao et al.'s 10M; an explicit dead_tokens is kept."""
    tc = TrainConfig(store=StoreConfig(batch_size=1024))
    assert members.dead_window(tc, 500_000) == 5_000
    assert members.dead_window(tc, 10_000) == 1024
    assert members.dead_window(tc, 10**12) == 10_000_000
    assert members.dead_window(dataclasses_replace(tc, dead_tokens=7), 500_000) == 7
    acts = _planted(tmp_path)
    tr = Trainer(_cfg(tmp_path, acts, dead_tokens=None, total_tokens=100 * 256 * 4))
    assert tr.dead_tokens == 1024  # 4 batches of 256: a 100th of 400 steps
    with pytest.raises(ConfigError, match="dead_tokens=0"):
        TrainConfig(dead_tokens=0)


def test_short_batchtopk_run_leaves_a_threshold_that_keeps_about_k(tmp_path, monkeypatch):
    """Pins: the BatchTopK inference threshold was an EMA of rate 0.01 whatever the run's
    length, so a 122-step run kept 29% of its first batch's value and held-out L0 came out at
    21.7 for k 32. The rate is now fast enough that its time constant fits in the LR-decay
    phase: after a 60-step run on planted features, held-out L0 is within 3% of k, where the
    fixed rate misses by more than 5%. From random decoder rows: from whitened data rows the
    first threshold starts nearer its end, and the fixed rate's miss shrinks to 1.7%."""
    monkeypatch.setattr("sae.training.train.DECODER_INIT", "random")
    assert members.threshold_rate(122) == pytest.approx(1 / (0.2 * 122))
    assert members.threshold_rate(10**6) == 0.01
    x = np.load(_planted(tmp_path, n=16_096, k=3))
    np.save(tmp_path / "train.npy", x[:12_000])
    np.save(tmp_path / "held.npy", x[12_000:])  # the same dictionary, other draws

    def held_out_l0(out, rate=None):
        if rate is not None:
            monkeypatch.setattr(members, "threshold_rate", lambda steps: rate)
        arch = SAEConfig(d_in=None, architecture="batchtopk", d_sae=64, k=3)
        tc = _cfg(
            tmp_path,
            str(tmp_path / "train.npy"),
            out=out,
            sae=arch,
            total_tokens=60 * 256,
            eval_activations=str(tmp_path / "held.npy"),
        )
        folder = train(tc)[0]
        return json.loads((folder / "train_summary.json").read_text())["l0"]

    now, fixed = held_out_l0("now"), held_out_l0("fixed", 0.01)
    assert abs(now / 3 - 1) < 0.03 and abs(fixed / 3 - 1) > 0.05  # 2.97 and 2.81 when written


def _last_trainer_state(run) -> dict:
    last = sorted(p for p in run.iterdir() if p.name.isdigit())[-1]
    return json.loads((last / "trainer.json").read_text())


def test_the_stream_check_runs_only_for_the_fault_campaign(tmp_path, monkeypatch):
    """Pins issue 31 item 5: the fault campaign's row count and checksum were taken in every
    run's loop, reading each batch on the host. They are taken only under SAE_STREAM_CHECK=1
    (scripts/fault_campaign.py sets it), then count every row trained, and change no weight."""
    acts = _planted(tmp_path)
    monkeypatch.delenv("SAE_STREAM_CHECK", raising=False)
    plain = train(_cfg(tmp_path, acts, "plain"))[0]
    assert "stream" not in _last_trainer_state(tmp_path / "plain")
    monkeypatch.setenv("SAE_STREAM_CHECK", "1")
    checked = train(_cfg(tmp_path, acts, "checked"))[0]
    state = _last_trainer_state(tmp_path / "checked")
    assert state["stream"][0][0] == state["tokens"] == 46 * 256
    assert _weights(plain).keys() == _weights(checked).keys()
    assert all(torch.equal(v, _weights(checked)[k]) for k, v in _weights(plain).items())


def test_without_normalize_nothing_is_measured_or_applied(tmp_path):
    """Pins: the store measured the scale on its first chunk even under store.normalize False,
    and refused a first chunk of zeros with "pass --store.normalize False", the very flag given.
    Without it the `ActivationScale` measures nothing and the batches are the file's rows."""
    x = np.load(_planted(tmp_path))
    x[:1024] = 0.0  # the first chunk (buffer_tokens / 2 rows)
    np.save(tmp_path / "zeros_first.npy", x)
    store = StoreConfig(buffer_tokens=2048, batch_size=256)
    trainer = Trainer(_cfg(tmp_path, str(tmp_path / "zeros_first.npy"), store=store))
    acts = next(trainer.batches())
    assert trainer.scale.factors == {}
    raw = next(iter(ActivationStore(MatrixSource(tmp_path / "zeros_first.npy"), store)))
    assert torch.equal(acts["activations"], raw["activations"])


def test_a_member_is_built_whole_and_its_loss_is_a_method(tmp_path):
    """Pins issue 31 item 5: a Member's loss was a closure built twice, by the constructor with
    a placeholder BatchTopK threshold rate and again by the trainer once the run's length was
    known. The constructor takes the rate; `loss` is a method of a typed `Batch`."""
    cfg = SAEConfig(architecture="batchtopk", d_in=8, d_sae=32, k=2)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g) * 3
    thresholds = {}
    for rate in (0.5, 0.01):
        torch.manual_seed(0)
        m = members.Member("m", cfg, "h", None, 1e-3, "cpu", threshold_rate=rate)
        first = m.loss(Batch(x1), None, 1.0)
        t1 = float(m.sae.threshold[0])  # one value for every latent
        second = m.loss(Batch(x2), None, 1.0)
        low = float(torch.where(second.codes.top_acts > 0, second.codes.top_acts, torch.inf).min())
        assert float(m.sae.threshold[0]) == pytest.approx((1 - rate) * t1 + rate * low)
        assert first.loss.ndim == 0 and t1 > 0
        thresholds[rate] = float(m.sae.threshold[0])
    assert thresholds[0.5] != thresholds[0.01]
    with pytest.raises(ValueError, match="target is required for a transcoder"):
        tc = SAEConfig(d_in=8, d_out=4, d_sae=32, k=2)
        members.Member("t", tc, "h", "o", 1e-3, "cpu").loss(Batch(x1), None, 1.0)
    y = torch.randn(64, 4, generator=g)
    assert members.Member("t", tc, "h", "o", 1e-3, "cpu").loss(
        Batch(x1, y), None, 1.0
    ).x_hat.shape == (64, 4)


@pytest.mark.slow
def test_the_compiled_loss_equals_the_eager_one():
    """--compile compiles the `Member.loss` method (per SAE); it computes the eager loss."""
    cfg = SAEConfig(architecture="topk", d_in=8, d_sae=32, k=2)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    eager = members.Member("m", cfg, "h", None, 1e-3, "cpu").loss(Batch(x), None, 1.0)
    torch.manual_seed(0)
    compiled = members.Member("m", cfg, "h", None, 1e-3, "cpu", compile=True)
    assert torch.allclose(compiled.loss(Batch(x), None, 1.0).loss, eager.loss, rtol=1e-5)
