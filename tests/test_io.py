"""SAE folders: exact round trips, atomic writes, clear errors, and SAELens in both directions."""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

import sae as sae_pkg
from sae import fsutil, io
from sae.model.sae import SAE, SAEConfig
from sae.model.step import training_forward

D, S, K = 16, 48, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(arch: str, trained: bool = True, **kw) -> SAE:
    """Perturbed weights; batchtopk/matryoshka optionally with a learned threshold."""
    torch.manual_seed(0)
    if arch == "matryoshka":
        kw.setdefault("matryoshka_prefixes", [8, S])
    sae = SAE(SAEConfig(architecture=arch, d_in=D, d_sae=S, k=K, **kw))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
            if name == "threshold":
                p.copy_(0.2 * torch.rand_like(p))
    if trained and arch in ("batchtopk", "matryoshka"):
        training_forward(sae, data(seed=7))
    return sae


def data(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) + 0.3


# (architecture, config extras, batchtopk threshold learned) -> SAELens architecture
CASES = {
    "relu": (("relu", {}, True), "standard"),
    "topk": (("topk", {}, True), "topk"),
    "batchtopk": (("batchtopk", {}, True), "jumprelu"),
    "batchtopk_untrained": (("batchtopk", {}, False), "topk"),
    "matryoshka": (("matryoshka", {}, True), "jumprelu"),
    "jumprelu": (("jumprelu", {}, True), "jumprelu"),
    "gated": (("gated", {}, True), "gated"),
    "relu_nocenter": (("relu", {"apply_b_dec_to_input": False}, True), "standard"),
    "transcoder": (("relu", {"d_out": 12}, True), "transcoder"),
    "skip_transcoder": (("relu", {"d_out": 12, "skip_connection": True}, True), "skip_transcoder"),
    "jumprelu_skip_transcoder": (
        ("jumprelu", {"d_out": 12, "skip_connection": True}, True),
        "jumprelu_skip_transcoder",
    ),
    "topk_transcoder": (("topk", {"d_out": 12}, True), "topk_transcoder"),
}
SAELENS_READABLE = [name for name in CASES if name != "topk_transcoder"]


def build(name: str) -> SAE:
    (arch, kw, trained), _ = CASES[name]
    return make(arch, trained=trained, **kw)


@pytest.mark.parametrize("name", CASES)
def test_save_load_round_trip_is_exact(name, tmp_path):
    """Pins: every architecture comes back bit for bit (weights, threshold, config,
    metadata), so a resumed run continues from exactly the saved state."""
    sae = build(name)
    sae.metadata = {"model_name": "tiny", "hook_name": "encoder.layer.3"}
    io.save(sae, tmp_path / "f", metadata={"context_size": 128})
    back = sae_pkg.load(tmp_path / "f")
    assert back.cfg == sae.cfg
    assert back.state_dict().keys() == sae.state_dict().keys()
    for k, v in sae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back.metadata["hook_name"] == "encoder.layer.3"
    assert back.metadata["context_size"] == 128
    x = data()
    assert torch.equal(back(x).x_hat, sae(x).x_hat)


@pytest.mark.parametrize("name", CASES)
def test_cfg_json_is_saelens_v6(name, tmp_path):
    """Pins: the SAELens architecture each of ours is written as, and the v6 keys."""
    io.save(build(name), tmp_path / "f", metadata={"hook_name": "h"})
    cfg = json.loads((tmp_path / "f" / "cfg.json").read_text())
    assert cfg["architecture"] == CASES[name][1]
    for key in ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input"):
        assert key in cfg
    assert cfg["normalize_activations"] == "none" and cfg["dtype"] == "float32"
    assert cfg["metadata"]["hook_name"] == "h"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")


def test_sparsity_file_and_its_shape_check(tmp_path):
    sae = build("topk")
    log10 = torch.linspace(-6, 0, S)
    io.save(sae, tmp_path / "f", sparsity_log10=log10)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "f" / "sparsity.safetensors"))["sparsity"], log10)
    with pytest.raises(ValueError, match=r"sparsity_log10 has shape \(3,\)"):
        io.save(sae, tmp_path / "g", sparsity_log10=torch.zeros(3))
    assert not (tmp_path / "g").exists()


def test_save_replaces_an_sae_folder_and_refuses_other_folders(tmp_path):
    """Pins: re-saving replaces the whole SAE folder; a folder of other files is never wiped."""
    io.save(build("topk"), tmp_path / "f", sparsity_log10=torch.zeros(S))
    io.save(build("relu"), tmp_path / "f")
    assert sae_pkg.load(tmp_path / "f").cfg.architecture == "relu"
    assert not (tmp_path / "f" / "sparsity.safetensors").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(fsutil.ForeignFolderError, match="has no .sae-folder.json"):
        io.save(build("topk"), tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "other"]


def test_failed_save_leaves_old_folder_and_no_debris(tmp_path, monkeypatch):
    """Pins: a crash while writing must never leave a half-written or missing SAE folder."""
    io.save(build("topk"), tmp_path / "f")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fsutil, "save_file", boom)  # the safetensors write inside io.save
    with pytest.raises(OSError, match="disk full"):
        io.save(build("relu"), tmp_path / "f")
    assert sae_pkg.load(tmp_path / "f").cfg.architecture == "topk"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_load_errors_name_the_path_and_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sae_pkg.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty': it is not an SAE folder of a known layout"):
        sae_pkg.load(tmp_path / "empty")
    io.save(build("topk"), tmp_path / "f")
    (tmp_path / "f" / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json is not valid JSON"):
        sae_pkg.load(tmp_path / "f")
    io.save(build("jumprelu"), tmp_path / "g")
    state = {k: v for k, v in build("jumprelu").state_dict().items() if k != "threshold"}
    save_file(state, str(tmp_path / "g" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors .* missing \['threshold'\]"):
        sae_pkg.load(tmp_path / "g")
    (tmp_path / "g" / "sae_weights.safetensors").unlink()
    with pytest.raises(ValueError, match=r"has cfg\.json but no sae_weights\.safetensors"):
        sae_pkg.load(tmp_path / "g")


def write_saelens_folder(path, cfg: dict, state: dict) -> None:
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(state, str(path / "sae_weights.safetensors"))


def test_load_reads_pre_v6_saelens_keys(tmp_path):
    """Pins: old SAELens folders (hook_point, activation_fn_str, no architecture) still load."""
    ref = build("topk")
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    old_cfg = {
        "d_in": D,
        "d_sae": S,
        "hook_point": "blocks.3.hook_resid_post",
        "model_name": "gpt2",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "dtype": "torch.float32",
    }
    write_saelens_folder(tmp_path / "old", old_cfg, {**state, "scaling_factor": torch.ones(S)})
    back = sae_pkg.load(tmp_path / "old")
    assert back.cfg.architecture == "topk" and back.cfg.k == K
    assert back.metadata == {"hook_name": "blocks.3.hook_resid_post", "model_name": "gpt2"}
    assert torch.equal(back(data()).x_hat, ref(data()).x_hat)


def test_load_refuses_run_time_normalisation(tmp_path):
    """Pins: SAELens layer_norm SAEs normalise inside forward; reading them as plain SAEs
    would silently give wrong outputs."""
    state = {k: v.detach() for k, v in build("relu").state_dict().items()}
    cfg = {"architecture": "standard", "d_in": D, "d_sae": S, "normalize_activations": "layer_norm"}
    write_saelens_folder(tmp_path / "ln", cfg, state)
    with pytest.raises(ValueError, match="normalize_activations='layer_norm'"):
        sae_pkg.load(tmp_path / "ln")


# ---- the real SAELens package -------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_lens():
    sl = pytest.importorskip("sae_lens")
    warnings.filterwarnings("ignore", module="sae_lens")
    return sl


@pytest.mark.parametrize("name", SAELENS_READABLE)
def test_saelens_loads_our_folders_with_the_same_outputs(name, tmp_path, sae_lens):
    """Pins: SAELens's own loader reads our folder and encodes/decodes as we do (1e-5)."""
    ours = build(name)
    io.save(ours, tmp_path / "f")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "f"))
    x = data()
    latents = theirs.encode(x)
    assert torch.allclose(latents, ours.encode(x), atol=1e-5)
    assert torch.allclose(theirs.decode(latents), ours.decode(latents), atol=1e-5)
    assert torch.allclose(theirs(x), ours(x).x_hat, atol=1e-5)


def saelens_models(sl):
    t = dict(d_out=12, apply_b_dec_to_input=False)
    yield "standard", sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=S))
    yield "topk", sl.TopKSAE(sl.TopKSAEConfig(d_in=D, d_sae=S, k=K))
    cfg = sl.TopKSAEConfig(d_in=D, d_sae=S, k=K, rescale_acts_by_decoder_norm=True)
    yield "topk_rescaled", sl.TopKSAE(cfg)
    yield "jumprelu", sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D, d_sae=S))
    yield "gated", sl.GatedSAE(sl.GatedSAEConfig(d_in=D, d_sae=S))
    yield "transcoder", sl.Transcoder(sl.TranscoderConfig(d_in=D, d_sae=S, **t))
    yield "skip_transcoder", sl.SkipTranscoder(sl.SkipTranscoderConfig(d_in=D, d_sae=S, **t))
    cfg = sl.JumpReLUTranscoderConfig(d_in=D, d_sae=S, **t)
    yield "jumprelu_transcoder", sl.JumpReLUTranscoder(cfg)
    cfg = sl.JumpReLUSkipTranscoderConfig(d_in=D, d_sae=S, **t)
    yield "jumprelu_skip_transcoder", sl.JumpReLUSkipTranscoder(cfg)
    cfg = sl.BatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=K)
    yield "batchtopk_training", sl.BatchTopKTrainingSAE(cfg)
    cfg = sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=K, matryoshka_widths=[8, S])
    yield "matryoshka_training", sl.MatryoshkaBatchTopKTrainingSAE(cfg)


def test_we_load_folders_saelens_saved(tmp_path, sae_lens):
    """Pins: folders written by SAELens itself load with the same outputs (1e-5); BatchTopK
    training folders keep their threshold, and their inference export matches too."""
    torch.manual_seed(0)
    x = data()
    for name, model in saelens_models(sae_lens):
        with torch.no_grad():
            for pname, p in model.named_parameters():
                p.add_(0.1 * torch.randn_like(p))
                if pname == "threshold":
                    p.copy_(0.2 * torch.rand_like(p))
        if name.endswith("_training"):
            model.topk_threshold = torch.tensor(0.3, dtype=torch.double)
            model.save_inference_model(str(tmp_path / f"{name}_inference"))
            reference = sae_lens.SAE.load_from_disk(str(tmp_path / f"{name}_inference"))
        else:
            reference = model
        model.save_model(str(tmp_path / name))
        for folder in {tmp_path / name, tmp_path / f"{name}_inference"}:
            if not folder.exists():
                continue
            ours = sae_pkg.load(folder)
            latents = reference.encode(x)
            assert torch.allclose(ours.encode(x), latents, atol=1e-5), folder.name
            assert torch.allclose(ours(x).x_hat, reference(x), atol=1e-5), folder.name
        if name == "batchtopk_training":
            assert sae_pkg.load(tmp_path / name).cfg.architecture == "batchtopk"
