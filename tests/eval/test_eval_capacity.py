"""`sae eval --suite capacity`: the suite's wiring (decoder rows and their usage -> capacity views,
blocks, the random null; the model's MLP read vectors per family -> neuron capacity and
polysemanticity). The capacity mathematics is pinned in tests/test_capacity.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import sae_with_decoder

from sae.analysis.capacity import capacity_summary
from sae.eval import cli_main
from sae.eval.capacity import read_polysemanticity
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(tmp_path, saes: dict[str, SAE], extra: list[str], meta: dict | None = None) -> dict:
    args = []
    for name, s in saes.items():
        save(s, tmp_path / name, metadata=meta)
        args.append(str(tmp_path / name))
    cli_main([*args, "--suite", "capacity", "--out", str(tmp_path / "rep"), *extra])
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    return {e["name"]: e["results"]["capacity"] for e in report["saes"]}


def test_orthonormal_decoder_has_capacity_one_each_and_random_meets_the_null(tmp_path):
    """An orthonormal decoder owns d dimensions (every C = 1, saturation 1, d singleton blocks) in
    both views; a random unit decoder sums to the null dm/(d + m − 1)
    (docs/methods.md#saturation-and-the-random-null, 2%)."""
    d, m = 32, 256
    x = torch.randn(3000, d, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "acts.npy", x.numpy())
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1)))
    rand = torch.nn.functional.normalize(
        torch.randn(m, d, generator=torch.Generator().manual_seed(2)), dim=1
    )
    res = _run(
        tmp_path,
        {"ortho": sae_with_decoder(q, 4), "random": sae_with_decoder(rand, 8)},
        ["--activations", str(tmp_path / "acts.npy"), "--eval-tokens", "3000"],
    )
    ortho = res["ortho"]["sae"]
    for view in ("geometric", "usage_weighted"):
        v = ortho[view]
        assert v["sum_capacity"] == pytest.approx(d, rel=1e-9), view
        assert v["saturation"] == pytest.approx(1.0) and v["n_monosemantic"] == d, view
        assert v["histogram"]["counts"][-1] == d, view
    assert ortho["geometric"]["blocks"]["size_counts"] == {"1": d}
    assert res["ortho"]["dead"] == 0 and res["ortho"]["tokens"] == 3000
    geo = res["random"]["sae"]["geometric"]
    assert geo["null_sum_capacity"] == pytest.approx(d * m / (d + m - 1))
    assert geo["sum_over_null"] == pytest.approx(1.0, abs=0.05)
    assert res["random"]["neurons"]["skipped"].startswith("activations come from a file")
    assert (tmp_path / "rep" / "ortho" / "capacity_histogram.png").is_file()
    assert "### capacity" in (tmp_path / "rep" / "report.md").read_text()


def test_read_polysemanticity_is_the_effective_number_of_latents():
    """NP_n = (Σ_k u²)² / Σ_k u⁴ with u_nk = √E[a_k²] w_n·d_k: brute force, and a neuron that
    reads exactly one latent's direction (the others orthogonal to it) has NP = 1."""
    g = torch.Generator().manual_seed(0)
    W_dec, W_in, usage = (
        torch.randn(50, 8, generator=g),
        torch.randn(6, 8, generator=g),
        torch.rand(50, generator=g),
    )
    u = (W_dec @ W_in.T) * usage.sqrt()[:, None]
    want = u.pow(2).sum(0).pow(2) / u.pow(4).sum(0)
    torch.testing.assert_close(read_polysemanticity(W_dec, usage, W_in, chunk=7).float(), want)
    eye = torch.eye(8)
    assert read_polysemanticity(eye, torch.ones(8), eye[:1]).item() == pytest.approx(1.0)


# (family, hook, MLP input module, stored transposed)
# (family, hook, the reading block's MLP input module, stored transposed): resid_post.N and
# mlp_out.N are read by block N+1, resid_pre.N by block N
FAMILIES = [
    ("bert", "resid_post.1", "encoder.layer.2.intermediate.dense", False),
    ("gpt2", "resid_post.1", "transformer.h.2.mlp.c_fc", True),
    ("gpt_neox", "resid_pre.1", "gpt_neox.layers.1.mlp.dense_h_to_4h", False),
    ("llama", "mlp_out.1", "model.layers.2.mlp.gate_proj", False),
]


@pytest.mark.parametrize(("family", "hook", "module", "conv1d"), FAMILIES)
def test_mlp_read_vectors_of_the_sae_block(
    tiny_models, text_file, tmp_path, family, hook, module, conv1d
):
    """Pins the MLP lookup per family (the block that reads the SAE's hook, not the one that wrote
    it, as the suite once did for resid_post.N; GPT-2's Conv1D transposed so rows are the d_mlp
    neurons) and the neuron capacity: the summary of those exact rows."""
    from transformers import AutoModel

    torch.manual_seed(0)
    s = SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4))
    meta = {"model_name": tiny_models[family], "hook_name": hook, "context_size": 16}
    extra = ["--data.source", text_file, "--eval-tokens", "200"]
    extra += ["--model-name", tiny_models[family]]
    res = _run(tmp_path, {"s": s}, extra, meta)
    neu = res["s"]["neurons"]
    assert neu["module"] == module and neu["block"] == int(module.split(".")[-3])
    assert neu["reads"] == f"block {neu['block']} reads {hook}"
    weights = dict(AutoModel.from_pretrained(tiny_models[family]).named_parameters())
    key = next(k for k in weights if module.split(".", 1)[1] in k and k.endswith("weight"))
    W = weights[key].detach()
    W_HD = W.T if conv1d else W
    assert neu["n_neurons"] == W_HD.shape[0] > 32
    want = capacity_summary(W_HD)["geometric"]["sum_capacity"]
    assert neu["capacity"]["geometric"]["sum_capacity"] == pytest.approx(want, rel=1e-6)
    p = neu["polysemanticity"]
    assert p["basis"].startswith("read vectors") and 1.0 <= p["median"] <= 64
    assert ("mlp.up_proj" in neu["extra"]) == (family == "llama")
