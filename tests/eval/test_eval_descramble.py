"""`sae eval --suite descramble`: the suite's wiring (rows or MLP preactivations -> HHᵀ ->
descrambler -> η, weights, alignment with the decoder). The descrambler mathematics is pinned in
tests/test_descramble.py and the alignment measures in tests/test_matching.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae.analysis.descramble import descrambler, smoothness_operator
from sae.eval import cli_main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(tmp_path, s: SAE, extra: list[str], meta: dict | None = None) -> dict:
    save(s, tmp_path / "s", metadata=meta)
    cli_main([str(tmp_path / "s"), "--suite", "descramble", "--out", str(tmp_path / "rep"), *extra])
    return json.loads((tmp_path / "rep" / "report.json").read_text())["saes"][0]["results"]


def test_eta_star_is_the_brockett_bound_and_a_pca_decoder_aligns_fully(tmp_path):
    """On activation rows: η(P*) equals the Brockett bound Σ μ_k σ_k² of HHᵀ/n computed here
    (uncentred, docs/methods.md#descrambler), the neurons as they are are rougher, and a decoder
    made of the principal directions has usage-weighted MMCS 1 and captures the whole space at r =
    d."""
    d, n = 24, 4000
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=g) * torch.linspace(3, 0.2, d)) @ torch.linalg.qr(
        torch.randn(d, d, generator=g)
    )[0] + 0.5
    np.save(tmp_path / "acts.npy", x.numpy())
    hht = x.double().T @ x.double() / n
    want = descrambler(hht, smoothness_operator(d, "fourier"))
    s = SAE(SAEConfig(architecture="topk", d_in=d, d_sae=d, k=6))
    with torch.no_grad():
        s.W_dec.copy_(want.U_HH.T.float())  # rows = uncentred principal directions
        s.W_enc.copy_(want.U_HH.float())
        s.b_enc.zero_()
        s.b_dec.zero_()
    res = _run(tmp_path, s, ["--activations", str(tmp_path / "acts.npy"), "--eval-tokens", str(n)])
    ds = res["descramble"]
    assert ds["source"] == "activations" and ds["n_h"] == d and ds["tokens"] == n
    eta = ds["eta"]
    assert eta["star"] == pytest.approx(want.eta_star, rel=1e-9)
    assert eta["at_P_star"] == pytest.approx(eta["star"], rel=1e-9)
    assert eta["path"]["at_P_star"] == pytest.approx(eta["path"]["star"], rel=1e-9)
    assert eta["identity"] > 2 * eta["star"] and eta["path"]["seriation"] >= eta["path"]["star"]
    al = ds["alignment"]
    assert al["weighted_mmcs"] == pytest.approx(1.0, abs=1e-5) and al["null"] < 0.9
    assert al["phi"]["r"][-1] == d and al["phi"]["phi_r"][-1] == pytest.approx(1.0, abs=1e-6)
    assert "weights" not in ds and (tmp_path / "rep" / "s" / "subspace_capture.png").is_file()


@pytest.mark.parametrize(
    ("family", "hook", "module"),
    [("gpt2", "resid_post.1", "transformer.h.2.mlp.c_fc"),
     ("llama", "resid_pre.1", "model.layers.1.mlp.gate_proj")],
)  # fmt: skip
def test_mlp_preactivations_and_descrambled_weights(
    tiny_models, text_file, tmp_path, family, hook, module
):
    """Live models descramble the MLP preactivations of the block that reads the SAE's hook
    (resid_post.1 -> block 2, resid_pre.1 -> block 1: the bug was block N for resid_post.N); the saved W_desc is an
    orthogonal transform of the read weights (W_descᵀW_desc = W_inᵀW_in), with the Brockett
    bound reached, and the principal read directions are compared with the decoder."""
    torch.manual_seed(0)
    s = SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4))
    meta = {"model_name": tiny_models[family], "hook_name": hook, "context_size": 16}
    extra = ["--data.source", text_file, "--eval-tokens", "300"]
    extra += ["--model-name", tiny_models[family]]
    res = _run(tmp_path, s, extra, meta)
    ds = res["descramble"]
    assert ds["source"] == "mlp_preactivations" and ds["module"] == module
    assert ds["eta"]["at_P_star"] == pytest.approx(ds["eta"]["star"], rel=1e-9)
    assert ds["eta"]["identity"] >= ds["eta"]["star"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models[family])
    W = dict(model.named_modules())[module].weight.detach().double()
    W_HD = W.T if family == "gpt2" else W
    w = load_file(tmp_path / "rep" / ds["weights"]["file"])["W_desc"].double()
    assert w.shape == W_HD.shape == (ds["n_h"], 32)
    torch.testing.assert_close(w.T @ w, W_HD.T @ W_HD, rtol=1e-4, atol=1e-4)
    al = ds["alignment"]
    assert al["K"] == 32 and al["basis"].startswith("read directions")
    assert 0 < al["weighted_mmcs"] <= 1 and len(al["phi"]["r"]) == len(al["phi"]["phi_r"])
