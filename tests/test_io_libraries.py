"""SAEs made by sparsify and dictionary_learning themselves load with the outputs those libraries
compute (1e-5); their metadata lands on `cfg`. Each test skips if its library is not installed."""

import json
import warnings

import pytest
import torch

import sae as sae_pkg

D, S, K = 16, 48, 5
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n: int = 64, d: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + 0.3


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Random non-zero biases and weights, so every term of encode/decode is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ---- sparsify --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparsify():
    warnings.filterwarnings("ignore", message="Triton not installed")
    return pytest.importorskip("sparsify")


SPARSIFY_CASES = {
    "sae": {},
    "transcoder": {"transcode": True},
    "skip_transcoder": {"transcode": True, "skip_connection": True},
    "sae_with_skip": {"skip_connection": True},
}


@pytest.mark.parametrize("name", SPARSIFY_CASES)
def test_sparsify_folders_reproduce_sparsify(name, tmp_path, sparsify):
    """Pins: a SparseCoder saved by sparsify (save_to_disk) loads with its latents and output
    to 1e-5: autoencoder (b_dec centring), transcoder (no centring), linear skip, and an
    autoencoder with a skip (centring folded into b_enc); the run config names the model."""
    cfg = sparsify.SparseCoderConfig(k=K, num_latents=S, **SPARSIFY_CASES[name])
    theirs = sparsify.SparseCoder(D, cfg)
    perturb(theirs)
    theirs.save_to_disk(tmp_path / "run" / "layers.1")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))

    ours = sae_pkg.load(tmp_path / "run" / "layers.1")
    x = data()
    with torch.no_grad():
        top = theirs.encode(x)
        dense = torch.zeros(len(x), S).scatter_(-1, top.top_indices, top.top_acts)
        assert torch.allclose(ours.encode(x), dense, atol=1e-5)
        assert torch.allclose(ours(x).x_hat, theirs(x).sae_out, atol=1e-5)
    assert ours.cfg.model_name == "EleutherAI/pythia-70m"
    if cfg.transcode:
        assert (ours.cfg.hook_name, ours.cfg.target_hook_name) == ("layers.1:input", "layers.1")
    else:
        assert ours.cfg.hook_name == "layers.1"
    # The same SAE again through the run folder plus the hookpoint, as sparsify's load_many does.
    again = sae_pkg.load(tmp_path / "run", "layers.1")
    assert torch.equal(again.W_enc, ours.W_enc)


def test_sparsify_groupmax_is_refused(tmp_path, sparsify):
    """Pins: groupmax coders have no equivalent here; the error says so instead of loading
    something that computes different latents."""
    coder = sparsify.SparseCoder(
        D, sparsify.SparseCoderConfig(k=4, num_latents=S, activation="groupmax")
    )
    coder.save_to_disk(tmp_path / "layers.0")
    with pytest.raises(ValueError, match="activation='groupmax'"):
        sae_pkg.load(tmp_path / "layers.0")


# ---- dictionary_learning ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dl():
    pytest.importorskip("dictionary_learning")
    import dictionary_learning.dictionary as dictionary
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    return {
        "AutoEncoder": lambda: dictionary.AutoEncoder(D, S),
        "AutoEncoderNew": lambda: dictionary.AutoEncoderNew(D, S),
        "GatedAutoEncoder": lambda: dictionary.GatedAutoEncoder(D, S),
        "JumpReluAutoEncoder": lambda: dictionary.JumpReluAutoEncoder(D, S),
        "AutoEncoderTopK": lambda: AutoEncoderTopK(D, S, K),
        "BatchTopKSAE": lambda: BatchTopKSAE(D, S, K),
        "MatryoshkaBatchTopKSAE": lambda: MatryoshkaBatchTopKSAE(D, S, K, [8, S - 8]),
    }


DL_CLASSES = [
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
]


def save_like_trainsae(ae: torch.nn.Module, folder, dict_class: str) -> None:
    """What dictionary_learning's trainSAE writes: config.json, then ae.pt (torch.save of the
    state dict moved to CPU)."""
    folder.mkdir(parents=True)
    trainer = {
        "dict_class": dict_class,
        "activation_dim": D,
        "dict_size": S,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "layer": 3,
        "submodule_name": "resid_post_layer_3",
    }
    if hasattr(ae, "k"):
        trainer["k"] = int(ae.k)
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {}}))
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")


@pytest.mark.parametrize("dict_class", DL_CLASSES)
@pytest.mark.parametrize("threshold", [0.2, None])
def test_dictionary_learning_folders_reproduce_dictionary_learning(
    dict_class, threshold, tmp_path, dl
):
    """Pins: every dictionary class trainSAE saves loads with the latents and reconstruction the
    library computes (1e-5): input centring per class, gated's two paths, JumpReLU without
    centring, TopK, and BatchTopK/Matryoshka with a learned scalar threshold (None: never
    estimated, where the library's encode is a plain ReLU)."""
    if threshold is None and dict_class not in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        pytest.skip("only the batch variants have an estimated threshold")
    theirs = dl[dict_class]()
    perturb(theirs)
    with torch.no_grad():
        if dict_class == "JumpReluAutoEncoder":
            theirs.threshold.copy_(0.2 * torch.rand(S))
        elif threshold is not None and hasattr(theirs, "threshold"):
            theirs.threshold.fill_(threshold)
    save_like_trainsae(theirs, tmp_path / "trainer_0", dict_class)

    ours = sae_pkg.load(tmp_path / "trainer_0")
    x = data()
    with torch.no_grad():
        latents = theirs.encode(x)
        assert torch.allclose(ours.encode(x), latents, atol=1e-5)
        assert torch.allclose(ours.decode(latents), theirs.decode(latents), atol=1e-5)
        assert torch.allclose(ours(x).x_hat, theirs(x), atol=1e-5)
    assert ours.cfg.model_name == "EleutherAI/pythia-70m-deduped"
    assert ours.cfg.hook_name == "resid_post.3"


def test_dictionary_learning_ae_pt_with_code_is_refused(tmp_path):
    """Pins: ae.pt is read with weights_only=True, so a pickle that would run code on load is a
    one-line error, not executed."""
    folder = tmp_path / "evil"
    folder.mkdir()

    class Boom:
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({"encoder.weight": Boom()}, folder / "ae.pt")
    with pytest.raises(ValueError, match="not a plain state dict of tensors"):
        sae_pkg.load(folder)


def test_ae_pt_is_refused_unread_on_a_torch_whose_weights_only_can_be_bypassed(
    tmp_path, monkeypatch
):
    """Pins issue 25.3: weights_only=True had known bypasses before torch 2.10 (CVE-2025-32434,
    fixed in 2.6.0; CVE-2026-24747, fixed in 2.10.0), yet pyproject allowed torch>=2.2 and ae.pt
    was read whatever the release. On such a torch, ae.pt is now one error naming the advisory and
    torch.load is never called (the package's floor: tests/test_requirements.py)."""
    from sae.config import ConfigError

    folder = tmp_path / "dl"
    folder.mkdir()
    torch.save({"encoder.weight": torch.zeros(4, 2)}, folder / "ae.pt")
    calls = []
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match="CVE-2025-32434") as e:
        sae_pkg.load(folder)
    assert calls == [] and "torch>=2.10" in str(e.value) and "\n" not in str(e.value)
