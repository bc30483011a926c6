"""`sae eval --suite interaction`: the suite's wiring on tiny config-built models (the reading
block replayed with its masks and positions, bases side by side, SAE edges complete), the hook ->
reading block rule, and the one-line errors. The mathematics is pinned in
tests/analysis/test_interaction_*.py."""

from __future__ import annotations

import json

import pytest
import torch

from sae.analysis.interaction_graph import Edges
from sae.config import ConfigError
from sae.eval import cli_main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sae(d: int = 32) -> SAE:
    torch.manual_seed(0)
    return SAE(SAEConfig(architecture="topk", d_in=d, d_sae=64, k=4))


@pytest.mark.parametrize(("family", "hook"), [("gpt2", "resid_post.0"), ("llama", "resid_pre.1")])
def test_interaction_suite_on_tiny_models(tiny_models, text_file, tmp_path, family, hook):
    """End to end: report fields for neuron/PCA/LIB/SAE, exact attribution completeness (the
    block is folded homogeneously, so single-point gradients are exact: neuron and SAE bases
    < 1e-4 in float32), LIB's Λ descending, the figures written."""
    meta = {"model_name": tiny_models[family], "hook_name": hook, "context_size": 16}
    save(_sae(), tmp_path / "s", metadata=meta)
    out = tmp_path / "rep"
    cli_main([str(tmp_path / "s"), "--suite", "interaction", "--data.source", text_file,
              "--model-name", tiny_models[family],
              "--eval-tokens", "96", "--out", str(out)])  # fmt: skip
    r = json.loads((out / "report.json").read_text())["saes"][0]["results"]["interaction"]
    block = int(hook.split(".")[1]) + (hook.startswith("resid_post"))
    assert r["reads"] == f"block {block} reads {hook}"
    assert r["tokens"] >= 96 and r["mprime"]["mode"] == "exact"
    assert r["downstream"]["directions"] == 32
    assert set(r["bases"]) == {"neuron", "pca", "lib"}
    for b in ("neuron", "pca"):
        assert r["bases"][b]["completeness_error"] < 1e-4, b
    assert r["sae"]["completeness_error"] < 1e-4
    assert r["bases"]["neuron"]["directions"] == 32
    lam = torch.tensor(r["lambda"][1:])
    assert (lam[:-1] >= lam[1:]).all() and len(lam) == r["bases"]["lib"]["directions"]
    s = r["bases"]["lib"]["sparsity"]
    assert 0 <= s["gini"] <= 1 and 1 <= s["k_90"] <= s["k_99"] <= s["edges"]
    assert 0 <= r["sae"]["error_share"] <= 1
    assert r["sae"]["alignment"]["lib"]["null"] > 0
    for fig in ("interaction_graph", "edge_mass", "ablation_curves", "subspace_capture"):
        assert (out / "s" / f"{fig}.png").is_file(), fig
    assert "### interaction" in (out / "report.md").read_text()


def test_reading_block_rule(tiny_models):
    """resid_post.N and mlp_out.N are read by block N+1, resid_pre.N and attn_out.N by block N;
    the last block's output has no reader (the bug: capacity used block N for resid_post.N)."""
    from sae.activations.capture import load_model
    from sae.config.schema import ModelConfig
    from sae.eval.layer import reading_block

    model, _ = load_model(ModelConfig(name=tiny_models["gpt2"], hooks=["resid_post.0"]))
    want = {"resid_post.0": 1, "resid_pre.0": 0, "mlp_out.1": 2, "attn_out.1": 1,
            "transformer.h.1": 2, "transformer.h.1:input": 1}  # fmt: skip
    for hook, i in want.items():
        assert reading_block(model, hook).index == i, hook
    assert reading_block(model, "resid_post.2") is None


def test_bases_only_without_an_sae(tiny_models, text_file):
    """`analyse(batches)` runs without an SAE: bases, degeneracy and curves, no 'sae' entry."""
    from sae.activations.capture import load_model
    from sae.activations.sources import LiveSource
    from sae.config.schema import DataConfig, ModelConfig, StoreConfig
    from sae.eval.interaction import analyse, collect

    mcfg = ModelConfig(name=tiny_models["llama"], hooks=["resid_post.0"])
    model, tok = load_model(mcfg)
    src = LiveSource(mcfg, DataConfig(source=text_file, context_size=16, part="eval"),
                     StoreConfig(), model=model, tokenizer=tok)  # fmt: skip
    r = analyse(collect(model, "resid_post.0", src, 64)).results
    assert "sae" not in r and set(r["bases"]) == {"neuron", "pca", "lib"}
    assert r["degeneracy"]["firing"]["units"] == 64
    assert r["bases"]["lib"]["edges_needed"]["k"] >= 1


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_block_call_leaves_a_bfloat16_model_in_bfloat16(tiny_models, family):
    """Pins issue 24's interaction-suite traceback on a bf16 model ("mat1 and mat2 must have the
    same dtype, but got Float and BFloat16"): the hook recording the MLP preactivation returned
    its float32 copy, which replaced the module's output inside the forward. The preactivation
    is still recorded in float32, equal to the module's own bf16 output."""
    from sae.activations.capture import load_model
    from sae.config.schema import ModelConfig
    from sae.eval.layer import block_call, mlp_read, reading_block

    model, _ = load_model(
        ModelConfig(name=tiny_models[family], hooks=["resid_post.0"], dtype="bfloat16")
    )
    mlp = mlp_read(model, "resid_post.0")
    module = dict(model.named_modules())[mlp.module]
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        ids = torch.randint(3, 100, (2, 8))
        call = block_call(model, reading_block(model, "resid_post.0"), ids, [mlp.module])
    finally:
        handle.remove()
    pre = call.extra[mlp.module]
    assert pre.dtype == torch.float32 and torch.equal(pre, seen[0].float())
    assert call.y_BTD.dtype == torch.float32 and torch.isfinite(call.y_BTD).all()


def test_suite_refuses_file_activations_and_the_last_layer(tiny_models, text_file, tmp_path):
    """One-line ConfigErrors before any work: activation files (no model to differentiate) and a
    hook no block reads (the last block's output)."""
    import numpy as np

    np.save(tmp_path / "a.npy", np.random.randn(100, 32).astype("float32"))
    save(_sae(), tmp_path / "f")
    with pytest.raises(ConfigError, match="needs the SAE's model"):
        cli_main([str(tmp_path / "f"), "--suite", "interaction", "--activations",
                  str(tmp_path / "a.npy"), "--out", str(tmp_path / "r1")])  # fmt: skip
    meta = {"model_name": tiny_models["gpt2"], "hook_name": "resid_post.2", "context_size": 16}
    save(_sae(), tmp_path / "last", metadata=meta)
    with pytest.raises(ConfigError, match="read by a later block"):
        cli_main([str(tmp_path / "last"), "--suite", "interaction", "--data.source", text_file,
                  "--model-name", tiny_models["gpt2"], "--out", str(tmp_path / "r2")])  # fmt: skip
    assert not (tmp_path / "r2").exists()


def _batches(tiny_models, text_file, family: str, hook: str, tokens: int = 64):
    from sae.activations.capture import load_model
    from sae.activations.sources import LiveSource
    from sae.config.schema import DataConfig, ModelConfig, StoreConfig
    from sae.eval.interaction import collect

    mcfg = ModelConfig(name=tiny_models[family], hooks=[hook])
    model, tok = load_model(mcfg)
    src = LiveSource(mcfg, DataConfig(source=text_file, context_size=16, part="eval"),
                     StoreConfig(), model=model, tokenizer=tok)  # fmt: skip
    return model, collect(model, hook, src, tokens)


def test_downstream_loss_is_the_lm_ce_for_causal_lms(tiny_models, text_file):
    """Edges needed are scored by the model's own loss (issue 12): for a causal LM the clean
    loss is the mean next-token CE that HF computes from labels=ids (1e-5), an unshifted block
    output adds exactly 0, and a large shift of the reading block's output raises the CE."""
    from sae.eval.interaction import DownstreamLoss

    model, batches = _batches(tiny_models, text_file, "gpt2", "resid_post.0")
    loss = DownstreamLoss(batches[:2])
    assert loss.kind == "causal_lm" and "CE" in loss.name
    ids = [b.ids_BT for b in batches[:2]]
    with torch.no_grad():
        hf = [float(model(input_ids=i, labels=i).loss) * i.shape[0] * (i.shape[1] - 1) for i in ids]
    want = sum(hf) / sum(i.shape[0] * (i.shape[1] - 1) for i in ids)
    assert abs(loss.clean_ce - want) < 1e-5
    zeros = [torch.zeros(int(b.keep_BT.sum()), 32) for b in batches[:2]]
    assert loss(zeros) == 0.0
    g = torch.Generator().manual_seed(0)
    # measured 0.0094: the random-weight model's logits are small, so CE moves little
    assert loss([torch.randn(z.shape, generator=g) * 30 for z in zeros]) > 1e-3


def test_downstream_loss_of_an_encoder_is_the_fvu_of_the_final_hidden_state(tiny_models, text_file):
    """Encoders have no LM loss: the loss is the FVU of last_hidden_state over the kept rows.
    Known answer: the BERT block that reads resid_post.1 is the last one, so its output is the
    final hidden state and a shift dy gives exactly Σ‖dy‖² / Σ‖h − mean h‖² (1e-5 relative)."""
    from sae.eval.interaction import DownstreamLoss

    _, batches = _batches(tiny_models, text_file, "bert", "resid_post.1")
    loss = DownstreamLoss(batches[:1])
    assert loss.kind == "encoder" and loss.clean_ce is None and "final hidden" in loss.name
    b = batches[0]
    h = b.call.y_BTD[b.keep_BT].double()
    dy = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = float(dy.pow(2).sum() / (h - h.mean(0)).pow(2).sum())
    assert abs(loss([dy]) - want) < 1e-5 * want


def test_interaction_options_reach_the_suite_and_bad_values_are_refused(
    tiny_models, text_file, tmp_path
):
    """--interaction.* fields set the suite's budgets (window cut, downstream directions,
    tolerance, Leiden γ appear in the report); a bad value is a one-line ConfigError naming the
    field before any work (no report folder)."""
    meta = {"model_name": tiny_models["gpt2"], "hook_name": "resid_post.0", "context_size": 16}
    save(_sae(), tmp_path / "s", metadata=meta)
    for bad, msg in ((["--interaction.tol", "0"], "interaction.tol=0.0 must be > 0"),
                     (["--interaction.edge-tokens", "0"], "interaction.edge_tokens=0"),
                     (["--interaction.sources", "-1"], "interaction.sources=-1")):  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            cli_main([str(tmp_path / "s"), "--suite", "interaction", "--data.source", text_file,
                      "--model-name", tiny_models["gpt2"], "--out", str(tmp_path / "bad"),
                      *bad])  # fmt: skip
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "rep"
    cli_main([str(tmp_path / "s"), "--suite", "interaction", "--data.source", text_file,
              "--model-name", tiny_models["gpt2"],
              "--eval-tokens", "48", "--out", str(out), "--interaction.window-tokens", "8",
              "--interaction.out-directions", "6", "--interaction.tol", "0.05",
              "--interaction.gamma", "2", "--interaction.edge-tokens", "16"])  # fmt: skip
    r = json.loads((out / "report.json").read_text())["saes"][0]["results"]["interaction"]
    assert r["window_tokens"] == 8 and r["downstream"]["directions"] == 6
    lib = r["bases"]["lib"]
    assert lib["edges_needed"]["tol"] == 0.05 and lib["leiden"]["gamma"] == 2.0
    assert set(lib["leiden_sweep"]) == {"0.5", "1.0", "2.0"}
    assert r["loss"]["kind"] == "causal_lm" and r["loss"]["clean"] > 0


def _panel_labels(monkeypatch, res: dict, edges) -> dict[str, list[str]]:
    """The upstream node labels of each interaction-graph panel, by panel title."""
    from sae.eval import interaction_plots as iplots

    seen = {}

    def grab(fig, path):
        for ax in fig.axes:
            seen[ax.get_title()] = [t.get_text() for t in ax.texts if t.get_position()[0] < 0]

    monkeypatch.setattr(iplots.plots, "save", grab)
    iplots.interaction_graph(None, res, edges, "t")
    return seen


def test_sae_graph_nodes_are_labelled_by_latent_id(monkeypatch):
    """Issue 24: the SAE panel labelled its nodes by their column among the live latents (1, 2,
    3), not by latent id. Known answer: live latents 5, 17 and 40 (columns [bias, 5, 17, 40,
    error]) are labelled 5, 17, 40 and the error node 'error'; basis panels keep direction
    indices."""
    E = {
        "pca": torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 2]]),
        "sae": torch.tensor([[0.0, 0, 0, 0, 0], [9, 1, 2, 3, 4], [9, 1, 1, 1, 1]]),
    }
    labels = _panel_labels(monkeypatch, {}, Edges(E, [5, 17, 40]))
    assert sorted(labels["SAE → downstream PCA"]) == sorted(["5", "17", "40", "error"])
    assert sorted(labels["PCA → downstream PCA"]) == ["1", "2"]


def test_trivial_partition_remark_only_when_leiden_finds_one_cluster(
    tiny_models, text_file, monkeypatch
):
    """Issue 24: report.md always said "one cluster is the trivial partition", whatever Leiden
    found. The remark now names the bases with one cluster and is absent when none has one. On
    a real analysis, the SAE's live latents (the figure's node labels) are the latents that
    fire on the kept rows of the edge windows."""
    from sae.eval.interaction import _first_rows, analyse
    from sae.eval.interaction_plots import markdown

    _, batches = _batches(tiny_models, text_file, "gpt2", "resid_post.0")
    sae = _sae()
    analysis = analyse(batches, sae)
    res = {"reads": "block 1 reads resid_post.0", **analysis.results}  # as `run` adds it
    for b in res["bases"].values():
        b["leiden"]["n_clusters"] = 3
    assert "trivial partition" not in markdown(res, {})
    res["bases"]["lib"]["leiden"]["n_clusters"] = 1
    md = markdown(res, {})
    assert "LIB: one cluster, the trivial partition" in md and "PCA:" not in md
    fired = set()
    with torch.no_grad():
        for b in _first_rows(batches, 256):
            fired |= set(sae.encode(b.call.x_BTD[b.keep_BT]).nonzero()[:, 1].tolist())
    assert analysis.edges.sae_latents == sorted(fired)
    labels = _panel_labels(monkeypatch, res, analysis.edges)["SAE → downstream PCA"]
    assert set(labels) <= {str(m) for m in fired} | {"error"}
