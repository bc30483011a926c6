"""`sae eval --suite redundancy`: the suite's wiring (rows -> four codes -> records, bootstrap
groups, the large-dictionary path, embedding-interpolation paths -> Hurst records -> plots). The
mathematics itself (α, PR, ρ's, H) is pinned in tests/test_spectrum.py and test_smoothness.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import identity_sae

import sae.eval.redundancy as red
from sae.activations.capture import ActivationCapture
from sae.analysis.spectrum import CovarianceAccumulator, bootstrap_alpha, redundancy_summary
from sae.config.schema import DataConfig
from sae.eval import EvalConfig, EvalContext, cli_main, prepare
from sae.eval.layer import embedding_paths
from sae.eval.stream import BLOCK_ROWS
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _power_law_rows(n: int, d: int, alpha: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** (-alpha / 2)
    return (x @ q.T).astype(np.float32)


def _run_file(tmp_path, x: np.ndarray, saes: dict[str, SAE], n_boot: int = 20) -> dict:
    tmp_path.mkdir(exist_ok=True)
    np.save(tmp_path / "acts.npy", x)
    args = []
    for name, s in saes.items():
        save(s, tmp_path / name)
        args.append(str(tmp_path / name))
    out = cli_main(
        [*args, "--activations", str(tmp_path / "acts.npy"), "--suite", "redundancy",
         "--n-boot", str(n_boot), "--eval-tokens", str(len(x)), "--out", str(tmp_path / "rep")]
    )  # fmt: skip
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert out == str(tmp_path / "rep")
    return {e["name"]: e["results"]["redundancy"] for e in report["saes"]}


def test_raw_record_is_redundancy_summary_of_the_same_rows_and_identity_keeps_it(tmp_path):
    """Pins the x record to spectrum.redundancy_summary on the scored rows (no transformation
    on the way), the bootstrap groups (block ids dealt round-robin into BOOT_GROUPS), and the
    codes of an exact SAE: x_hat = x, error = 0, FVU_k = 0, PR ratio 1."""
    x = _power_law_rows(3000, 240, 1.5)
    x[:, :3] += 5.0  # an offset far from the origin: centring must not depend on it
    res = _run_file(tmp_path, x, {"ident": identity_sae(240)})["ident"]
    ref = redundancy_summary(CovarianceAccumulator().update(torch.from_numpy(x)))
    got = res["codes"]["x"]
    for key, want in ref.items():
        if key in ("alpha_ci95", "alpha_boot_bias", "H_random", "H_basis"):
            continue
        assert got[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    assert 1.4 < got["alpha"] < 1.6 and got["smooth_possible"] is True
    # the interval is bootstrap_alpha over the same groups: 128-row blocks dealt into 20 groups
    block = np.arange(len(x)) // BLOCK_ROWS
    groups = [
        CovarianceAccumulator().update(torch.from_numpy(x[block % red.BOOT_GROUPS == g]))
        for g in range(red.BOOT_GROUPS)
    ]
    boot = bootstrap_alpha(groups, 20, 0, *got["fit_range"])
    assert got["alpha_ci95"] == pytest.approx(list(boot.ci95), rel=1e-9)
    assert got["alpha_boot_bias"] == pytest.approx(boot.bias, rel=1e-9)
    assert got["alpha_ci95"][0] < got["alpha"] < got["alpha_ci95"][1]
    hat = res["codes"]["x_hat"]
    assert hat["alpha"] == pytest.approx(got["alpha"], rel=1e-6)
    assert res["fidelity"]["pr_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert max(abs(v) for v in res["fidelity"]["fvu_k"]) < 1e-10
    assert res["codes"]["error"]["PR"] is None  # zero covariance: no spectrum, no crash
    lat = res["codes"]["latents"]
    live = int((x > 0).any(0).sum() + (x < 0).any(0).sum())  # latents ±x_i that ever fire
    assert res["latents"]["live"] == lat["d_amb"] == live > 240 and lat["alpha_ci95"]
    assert res["smoothness"]["skipped"].startswith("activations come from a file")
    for fig in ("eigenspectra", "fvu_by_pcs"):
        assert (tmp_path / "rep" / "ident" / f"{fig}.png").is_file()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### redundancy" in md and "Random-projection test skipped" in md


def test_many_latents_take_the_top_k_path_with_exact_pr(tmp_path, monkeypatch):
    """Above DENSE_LATENTS the latents never form m × m: PR and rho_offdiag must still be exact
    (streamed trace and Frobenius norm), the top eigenvalues close to the dense ones."""
    x = _power_law_rows(4000, 64, 1.0, seed=1)
    torch.manual_seed(0)
    s = SAE(SAEConfig(architecture="topk", d_in=64, d_sae=1024, k=16))
    dense = _run_file(tmp_path / "a", x, {"s": s}, n_boot=0)["s"]["codes"]["latents"]
    monkeypatch.setattr(red, "DENSE_LATENTS", 100)
    top = _run_file(tmp_path / "b", x, {"s": s}, n_boot=0)["s"]
    lat = top["codes"]["latents"]
    assert top["latents"]["method"].startswith("top-")
    for key in ("PR", "rho_PR", "rho_offdiag"):
        assert lat[key] == pytest.approx(dense[key], rel=1e-9), key
    assert lat["n90"] in (None, dense["n90"])  # known only if the top k reach 90%
    assert lat["rho_info"] is None and lat["eff_rank"] is None
    k = lat["top_k_only"]
    assert np.allclose(lat["eigvals"][:20], dense["eigvals"][:20], rtol=1e-3)
    assert lat["alpha"] == pytest.approx(dense["alpha"], abs=0.05) and k < 1024


@pytest.fixture
def small_paths(monkeypatch):
    for name, value in dict(PATHS=2, PATH_TOKENS=8, PATH_POSITIONS=2, N_RANDOM=16).items():
        monkeypatch.setattr(red, name, value)


def test_live_model_gives_hurst_records_for_every_code(
    tiny_models, text_file, tmp_path, small_paths
):
    """Pins the random-projection wiring on a causal LM: every code gets H for random and basis
    directions, x also along decoder directions, and H lands in the redundancy records."""
    torch.manual_seed(0)
    s = SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4))
    meta = {"model_name": tiny_models["gpt2"], "hook_name": "resid_post.1", "context_size": 16}
    save(s, tmp_path / "s", metadata=meta)
    cli_main(
        [str(tmp_path / "s"), "--suite", "redundancy", "--data.source", text_file,
         "--model-name", tiny_models["gpt2"],
         "--eval-tokens", "400", "--n-boot", "0", "--out", str(tmp_path / "rep")]
    )  # fmt: skip
    res = json.loads((tmp_path / "rep" / "report.json").read_text())["saes"][0]["results"]
    sm = res["redundancy"]["smoothness"]
    assert sm["skipped"] is None and sm["points"] == red.PATH_POINTS >= 512
    assert set(sm["codes"]) == set(red.CODES) and sm["decoder"] is not None
    assert sm["n_paths"] == 2 and sm["positions"] == 2
    for code, h in sm["codes"].items():
        assert h["T"] == 512 and h["n_paths"] == 4, code  # 2 paths x 2 positions
        assert res["redundancy"]["codes"][code]["H_random"] == h["H_random"]
    assert 0 < sm["codes"]["x"]["H_random"] <= 1.05
    assert (tmp_path / "rep" / "s" / "hurst_vs_alpha.png").is_file()


@pytest.mark.parametrize(("family", "hook"), [("bert", "resid_post.0"), ("llama", "resid_pre.1")])
def test_path_endpoints_are_the_two_windows(tiny_models, text_file, tmp_path, family, hook):
    """Replacing the embedding output by (1 − t)E[w1] + tE[w2] must give exactly the clean
    activations of w1 at t = 0 and of w2 at t = 1 (positions and norms applied downstream)."""
    s = SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4))
    save(s, tmp_path / "s", metadata={"model_name": tiny_models[family], "hook_name": hook,
                                      "context_size": 16})  # fmt: skip
    cfg = EvalConfig([str(tmp_path / "s")], data=DataConfig(source=text_file, part="eval"),
                     data_fields=["source"], model_name=tiny_models[family],
                     out=str(tmp_path / "rep"))  # fmt: skip
    ctx = EvalContext(eval_tokens=100, n_boot=0, seed=0, device="cpu", batch_windows=4,
                      out=tmp_path / "rep")  # fmt: skip
    target = prepare(cfg, ctx)[0]
    paths = embedding_paths(target, n_paths=1, points=5, tokens=8, positions=8)
    assert not isinstance(paths, str)
    w1, w2 = (
        w[:8] for _, (_, w) in zip(range(2), target.source.windows.iter_from(0), strict=False)
    )
    keep = (target.source.keep_mask(w1[None]) & target.source.keep_mask(w2[None]))[0]
    cap = ActivationCapture(target.source.capture.model, [hook])
    a1, a2 = (cap(w[None])[hook][0, keep] for w in (w1, w2))
    got = paths.acts[hook]  # [positions, T, d]
    assert got.shape == (int(keep.sum()), 5, 32)
    torch.testing.assert_close(got[:, 0], a1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, -1], a2, rtol=1e-5, atol=1e-5)
    assert (got[:, 2] - a1).abs().max() > 1e-3
