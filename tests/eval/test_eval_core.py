"""`sae eval --suite core`: known answers for the reconstruction sums, latent counts, the
bootstrap, and downstream fidelity with the SAE spliced into tiny GPT-2/Llama/BERT models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import identity_sae

from sae.config.schema import DataConfig
from sae.eval import EvalConfig, run_eval
from sae.eval.core import _Recon, recon_stats
from sae.eval.stats import WindowSums, bootstrap, resample_counts
from sae.io import save
from sae.model.sae import SAE, SAEConfig, SparseCodes, SparseOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Fixed:
    """Stands in for an SAE: returns a given reconstruction and latents."""

    def __init__(self, x_hat, latents):
        self.x_hat, self.latents = x_hat, latents

    def forward_sparse(self, x):
        vals, idx = self.latents.topk(self.latents.shape[-1], dim=-1)
        return SparseOutput(self.x_hat, SparseCodes(vals, idx))


def _scores(y_ND, yhat_ND, window_N, n_boot=0):
    rec = _Recon(d_sae=3)
    rec.add(_Fixed(yhat_ND, torch.ones(len(y_ND), 3)), y_ND, y_ND, window_N)
    sums = rec.acc.totals()
    counts = resample_counts(rec.acc.n_windows, n_boot, 0) if n_boot else None
    return {k: bootstrap(sums, fn, counts) for k, (fn, _, _) in recon_stats(y_ND.shape[1]).items()}


def test_fvu_is_zero_for_perfect_and_one_for_the_mean_even_far_from_the_origin():
    """Pins FVU as variance about the mean (not about zero): a large offset must not matter."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(600, 8, generator=g, dtype=torch.float64) * 0.1 + 1000.0
    win = torch.arange(600) // 20
    perfect = _scores(y, y.clone(), win)
    assert perfect["fvu"].value == 0.0 and perfect["mse"].value == 0.0
    assert perfect["cosine"].value == pytest.approx(1.0)
    mean = _scores(y, y.mean(0, keepdim=True).expand_as(y), win)
    assert mean["fvu"].value == pytest.approx(1.0, abs=1e-9)
    assert mean["explained_variance"].value == pytest.approx(0.0, abs=1e-9)


def test_mse_is_per_element_and_the_scale_fit_measures_shrinkage():
    """MSE must not scale with the number of tokens; a 0.8x shrunk reconstruction gives
    optimal_scale 1.25 and relative reconstruction bias 0.8."""
    y = torch.randn(1000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    once = _scores(y, y * 0.8, torch.arange(1000) // 10)
    twice = _scores(torch.cat([y, y]), torch.cat([y, y]) * 0.8, torch.arange(2000) // 10)
    assert once["mse"].value == pytest.approx(float((0.2 * y).pow(2).mean()), rel=1e-9)
    assert twice["mse"].value == pytest.approx(once["mse"].value, rel=1e-9)
    assert once["optimal_scale"].value == pytest.approx(1.25)
    assert once["relative_reconstruction_bias"].value == pytest.approx(0.8)
    assert once["l2_ratio"].value == pytest.approx(0.8)


def test_bootstrap_resamples_windows_with_the_textbook_width():
    """400 windows with i.i.d. N(0,1) means: the 95% interval of the mean is about ±1.96/√400."""
    v = torch.from_numpy(np.random.default_rng(0).standard_normal(400))
    acc = WindowSums()
    acc.add(torch.arange(400), v=v, n=torch.ones(400))
    iv = bootstrap(acc.totals(), lambda s: s["v"] / s["n"], resample_counts(400, 2000, 0))
    half_width = (iv.ci95[1] - iv.ci95[0]) / 2
    assert half_width == pytest.approx(1.96 * float(v.std()) / 20, rel=0.12)
    assert iv.ci95[0] < iv.value < iv.ci95[1]


def test_dead_and_dense_counts_on_hand_built_latents(tmp_path):
    """Latent j reads coordinate j: firing on 50%, 5%, 0.5%, 0% of tokens; latent 4 never can."""
    n, d = 2000, 4
    x = torch.zeros(n, d)
    x[: n // 2, 0] = 1.0
    x[: n // 20, 1] = 1.0
    x[: n // 200, 2] = 1.0
    x = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    np.save(tmp_path / "acts.npy", x.numpy())
    s = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=5))
    with torch.no_grad():
        s.W_enc.copy_(torch.cat([torch.eye(d), -torch.ones(d, 1)], 1))
        s.b_enc.zero_()
        s.b_dec.zero_()
    save(s, tmp_path / "sae")
    out = run_eval(
        EvalConfig(
            [str(tmp_path / "sae")],
            activations=str(tmp_path / "acts.npy"),
            n_boot=50,
            out=str(tmp_path / "rep"),
        )
    )
    core = json.loads((out / "report.json").read_text())["saes"][0]["results"]["core"]
    lat = core["latents"]
    assert (lat["dead"], lat["dense_1pct"], lat["dense_10pct"]) == (2, 2, 1)
    assert core["tokens"] == n and core["downstream"]["skipped"]
    assert core["reconstruction"]["l0"]["value"] == pytest.approx((n / 2 + n / 20 + n / 200) / n)
    assert sum(lat["l0_histogram"]["counts"]) == n


def _zero_sae(d: int, d_out: int | None = None) -> SAE:
    s = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=8, d_out=d_out))
    with torch.no_grad():
        s.W_dec.zero_()
        s.b_dec.zero_()
    return s


def _eval_live(tmp_path, model_path, text_file, saes: dict[str, tuple[SAE, dict]]):
    dirs = []
    for name, (s, meta) in saes.items():
        save(s, tmp_path / name, metadata={"model_name": model_path, "context_size": 16, **meta})
        dirs.append(str(tmp_path / name))
    cfg = EvalConfig(
        dirs,
        data=DataConfig(source=text_file, part="eval"),
        data_fields=["source"],
        model_name=model_path,
        eval_tokens=300,
        n_boot=50,
        out=str(tmp_path / "report"),
    )
    report = json.loads((run_eval(cfg) / "report.json").read_text())
    return {e["name"]: e["results"]["core"] for e in report["saes"]}, report


@pytest.mark.parametrize(("family", "hook"), [("gpt2", "resid_post.1"), ("llama", "resid_pre.1")])
def test_ce_recovered_is_one_for_identity_and_zero_for_zero_ablation(
    tiny_models, text_file, tmp_path, family, hook
):
    """Pins the splice (output hooks and ':input' pre-hooks) and the CE-recovered formula."""
    meta = {"hook_name": hook}
    res, report = _eval_live(
        tmp_path,
        tiny_models[family],
        text_file,
        {"ident": (identity_sae(32), meta), "zero": (_zero_sae(32), meta)},
    )
    ident, zero = res["ident"]["downstream"]["metrics"], res["zero"]["downstream"]["metrics"]
    assert res["ident"]["downstream"]["kind"] == "causal_lm"
    assert ident["ce_recovered"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert ident["kl"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert res["ident"]["reconstruction"]["fvu"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert zero["ce_recovered"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert (
        zero["kl"]["value"] > 1e-4
        and zero["ce_zero_ablation"]["value"] != zero["ce_clean"]["value"]
    )
    assert res["ident"]["tokens"] >= 300 and ident["ce_clean"]["ci95"] is not None
    assert report["frontier"]["fidelity_metric"] == "ce_recovered"
    assert (tmp_path / "report" / "frontier.png").is_file()


def test_transcoder_splices_at_its_target_hook(tiny_models, text_file, tmp_path):
    """A transcoder resid_pre.1 -> mlp_out.1 predicting zeros changes the model exactly as a
    zero autoencoder at mlp_out.1 does, and not as one at its input hook resid_pre.1."""
    saes = {
        "tc": (
            _zero_sae(32, d_out=32),
            {"hook_name": "resid_pre.1", "target_hook_name": "mlp_out.1"},
        ),
        "at_target": (_zero_sae(32), {"hook_name": "mlp_out.1"}),
        "at_input": (_zero_sae(32), {"hook_name": "resid_pre.1"}),
    }
    res, _ = _eval_live(tmp_path, tiny_models["gpt2"], text_file, saes)
    ce = {k: v["downstream"]["metrics"]["ce_spliced"]["value"] for k, v in res.items()}
    assert ce["tc"] == pytest.approx(ce["at_target"], abs=1e-9)
    assert abs(ce["tc"] - ce["at_input"]) > 1e-4
    assert res["tc"]["downstream"]["metrics"]["ce_recovered"]["value"] == pytest.approx(0, abs=1e-9)


def test_encoder_embedding_cosines(tiny_models, text_file, tmp_path):
    """BERT: identity SAE keeps final states and pooled embeddings (cos 1); zeros do not."""
    meta = {"hook_name": "resid_post.0"}
    res, _ = _eval_live(
        tmp_path,
        tiny_models["bert"],
        text_file,
        {"ident": (identity_sae(32), meta), "zero": (_zero_sae(32), meta)},
    )
    ident, zero = res["ident"]["downstream"]["metrics"], res["zero"]["downstream"]["metrics"]
    assert res["ident"]["downstream"]["kind"] == "encoder"
    assert ident["hidden_cosine"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert ident["pooled_cosine"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert zero["hidden_cosine"]["value"] < 0.999


def test_cache_and_live_streams_give_identical_numbers(tiny_models, text_file, tmp_path):
    """Pins the cache path (hooks picked by name, window ids kept for the bootstrap): a harvest
    of the held-out windows scores a transcoder exactly as the live model does."""
    from sae.activations.harvest import harvest
    from sae.config.schema import HarvestConfig, ModelConfig

    hooks = {"hook_name": "resid_pre.1", "target_hook_name": "mlp_out.1"}
    torch.manual_seed(0)
    tc = SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4, d_out=32))
    save(
        tc,
        tmp_path / "tc",
        metadata={"model_name": tiny_models["llama"], "context_size": 16, **hooks},
    )
    data = DataConfig(source=text_file, context_size=16, part="eval")
    cache = harvest(
        HarvestConfig(
            model=ModelConfig(name=tiny_models["llama"], hooks=["mlp_out.1", "resid_pre.1"]),
            data=data,
            out=str(tmp_path / "cache"),
            shard_tokens=100,
            quiet=True,
        )
    )
    common = dict(eval_tokens=10**6, n_boot=50, suite="core")
    live = run_eval(
        EvalConfig(
            [str(tmp_path / "tc")],
            data=data,
            data_fields=["source"],
            model_name=tiny_models["llama"],
            out=str(tmp_path / "live"),
            **common,
        )
    )
    cached = run_eval(
        EvalConfig(
            [str(tmp_path / "tc")], activations=str(cache), out=str(tmp_path / "cached"), **common
        )
    )
    a, b = (json.loads((p / "report.json").read_text())["saes"][0] for p in (live, cached))
    assert b["activations"]["kind"] == "cache" and b["activations"]["hook"] == "resid_pre.1"
    ra, rb = a["results"]["core"], b["results"]["core"]
    assert ra["tokens"] == rb["tokens"] and ra["windows"] == rb["windows"] > 1
    for name, m in ra["reconstruction"].items():
        assert rb["reconstruction"][name]["value"] == pytest.approx(m["value"], rel=1e-6), name
        assert rb["reconstruction"][name]["ci95"] == pytest.approx(m["ci95"], rel=1e-6), name
