"""Hub repo ids and SAELens releases load from a pre-populated local Hub cache, offline; bad ids
and unknown layouts are one-line errors that list what `sae.load` reads. No network is used:
HF_HUB_OFFLINE=1 for every test here."""

import json

import pytest
import torch
from safetensors.torch import save_file

import sae as sae_pkg
from sae.io import save
from sae.model.sae import SAE, SAEConfig

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache (huggingface_hub's layout) that `sae.load` reads offline."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def snapshot(cache, repo_id: str, rev: str = REV, branch: str = "main"):
    """models--org--name/snapshots/<rev>/ with refs/<branch> pointing at it, as a download
    leaves it (plain files instead of blob symlinks, which the cache also accepts)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def tiny(seed: int, arch: str = "topk") -> SAE:
    torch.manual_seed(seed)
    s = SAE(SAEConfig(architecture=arch, d_in=8, d_sae=24, k=3))
    with torch.no_grad():
        s.b_enc.normal_()
        s.b_dec.normal_()
    return s


def test_hub_repo_with_subfolder_loads_offline_from_the_cache(hub_cache):
    """Pins: 'org/name' + subfolder (either as the second argument or as a path tail) reads the
    cached snapshot with HF_HUB_OFFLINE=1, weights bit-identical; a repo of several SAEs named
    without a subfolder lists them; a revision that is not cached is a one-line error."""
    snap = snapshot(hub_cache, "someone/gpt2-saes")
    a, b = tiny(0), tiny(1)
    save(a, snap / "blocks.1.hook_resid_post", metadata={"hook_name": "blocks.1.hook_resid_post"})
    save(b, snap / "blocks.2.hook_resid_post", metadata={"model_name": "gpt2"})

    got = sae_pkg.load("someone/gpt2-saes", "blocks.1.hook_resid_post")
    assert torch.equal(got.W_enc, a.W_enc) and torch.equal(got.b_dec, a.b_dec)
    assert got.cfg.hook_name == "blocks.1.hook_resid_post"
    assert got.metadata["hub_repo"] == "someone/gpt2-saes"
    got = sae_pkg.load("someone/gpt2-saes/blocks.2.hook_resid_post", revision=REV)
    assert torch.equal(got.W_dec, b.W_dec) and got.cfg.model_name == "gpt2"

    with pytest.raises(ValueError, match=r"holds several SAEs \(blocks\.1\.hook_resid_post, "):
        sae_pkg.load("someone/gpt2-saes")
    with pytest.raises(ValueError, match=r"revision v2\) is not in the local Hub cache") as e:
        sae_pkg.load("someone/gpt2-saes", "blocks.1.hook_resid_post", revision="v2")
    assert "\n" not in str(e.value) and "sae.load reads ours or SAELens" in str(e.value)


def test_hub_sparsify_repo_loads_by_hookpoint(hub_cache):
    """Pins: a sparsify repo (one folder per hookpoint, the run's config.json at the top) loads
    by hookpoint as sparsify's load_from_hub does, and the run config names the model."""
    snap = snapshot(hub_cache, "EleutherAI/sae-tiny")
    (snap / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    (snap / "layers.1").mkdir()
    (snap / "layers.1" / "cfg.json").write_text(json.dumps({"k": 3, "num_latents": 24, "d_in": 8}))
    g = torch.Generator().manual_seed(0)
    state = {
        "encoder.weight": torch.randn(24, 8, generator=g),
        "encoder.bias": torch.randn(24, generator=g),
        "W_dec": torch.randn(24, 8, generator=g),
        "b_dec": torch.randn(8, generator=g),
    }
    save_file(state, str(snap / "layers.1" / "sae.safetensors"))
    got = sae_pkg.load("EleutherAI/sae-tiny", "layers.1")
    assert torch.equal(got.W_enc, state["encoder.weight"].T)
    assert (got.cfg.model_name, got.cfg.hook_name, got.cfg.k) == (
        "EleutherAI/pythia-70m",
        "layers.1",
        3,
    )


def test_unknown_repo_and_unknown_layout_are_one_line_errors(hub_cache, tmp_path):
    """Pins: a repo id that is not cached (offline), a name that is no folder/repo/release and a
    folder of no known layout each raise one line that lists the layouts understood."""
    cases = [
        ("nobody/no-such-repo", "is not in the local Hub cache and HF_HUB_OFFLINE is set"),
        ("no-slash-name", "neither a local folder nor a Hub repo id"),
    ]
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "weights.bin").write_bytes(b"\0")
    cases.append((stray, r"not an SAE folder of a known layout \(it holds \['weights\.bin'\]\)"))
    for source, why in cases:
        with pytest.raises(ValueError, match=why) as e:
            sae_pkg.load(source)
        msg = str(e.value)
        assert "\n" not in msg
        for layout in (
            "sae_weights.safetensors",
            "sae.safetensors",
            "ae.pt",
            "Hub repo",
            "release",
        ):
            assert layout in msg


def test_saelens_release_resolves_through_its_registry(hub_cache):
    """Pins: a SAELens release + sae_id is resolved by SAELens's registry to its repo and
    folder, then read from the (offline) cache; an unknown sae_id lists the release's ids."""
    directory = pytest.importorskip("sae_lens.loading.pretrained_saes_directory")
    lookup = directory.get_pretrained_saes_directory()["gpt2-small-res-jb"]
    assert lookup.conversion_func is None  # a SAELens-layout release, read natively
    path = lookup.saes_map["blocks.0.hook_resid_pre"]
    snap = snapshot(hub_cache, lookup.repo_id)
    ref = tiny(3, arch="relu")
    save(
        ref,
        snap / path,
        metadata={"hook_name": "blocks.0.hook_resid_pre", "model_name": "gpt2-small"},
    )
    got = sae_pkg.load("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    x = torch.randn(5, 8)
    assert torch.equal(got(x).x_hat, ref(x).x_hat)
    assert got.metadata["saelens_release"] == "gpt2-small-res-jb"
    assert got.cfg.hook_name == "blocks.0.hook_resid_pre" and got.cfg.architecture == "relu"
    with pytest.raises(ValueError, match=r"has no sae_id 'nope'; it has blocks\.0\.hook_resid_pre"):
        sae_pkg.load("gpt2-small-res-jb", "nope")


def test_saelens_release_of_dictionary_learning_saes_reads_ae_pt(hub_cache):
    """Pins: registry releases in dictionary_learning's layout (conversion 'dictionary_learning_1')
    resolve to their repo folder and load from ae.pt + config.json, with the trainer's
    lm_name and submodule recorded on cfg."""
    directory = pytest.importorskip("sae_lens.loading.pretrained_saes_directory")
    release, sae_id = (
        "sae_bench_pythia70m_sweep_standard_ctx128_0712",
        "blocks.3.hook_resid_post__trainer_10",
    )
    lookup = directory.get_pretrained_saes_directory()[release]
    assert lookup.conversion_func == "dictionary_learning_1"
    folder = snapshot(hub_cache, lookup.repo_id) / lookup.saes_map[sae_id]
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    state = {  # dictionary_learning's AutoEncoder: x -> relu(W(x - bias) + b) -> D f + bias
        "bias": torch.randn(8, generator=g),
        "encoder.weight": torch.randn(24, 8, generator=g),
        "encoder.bias": torch.randn(24, generator=g),
        "decoder.weight": torch.randn(8, 24, generator=g),
    }
    torch.save(state, folder / "ae.pt")
    trainer = {"dict_class": "AutoEncoder", "lm_name": "EleutherAI/pythia-70m-deduped",
               "layer": 3, "submodule_name": "resid_post_layer_3"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    got = sae_pkg.load(release, sae_id)
    x = torch.randn(5, 8, generator=g)
    f = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    assert torch.allclose(got.encode(x), f, atol=1e-6)
    assert torch.allclose(got.decode(f), f @ state["decoder.weight"].T + state["bias"], atol=1e-6)
    assert (got.cfg.model_name, got.cfg.hook_name) == (
        "EleutherAI/pythia-70m-deduped",
        "resid_post.3",
    )


def test_paths_that_leave_the_repo_are_refused(hub_cache, tmp_path):
    """Pins issue 25.5: 'org/name/../../x' kept its '..' and loaded whatever SAE sat outside the
    repo's snapshot (here: a folder beside the Hub cache). A '..' part, an absolute path or a
    backslash in the repo path, the subfolder or the sae_id is now one error naming it, from
    `sae.load`, from `split_repo_id` and from `sae eval`'s config, before anything is read."""
    from sae.config import ConfigError
    from sae.eval.config import EvalConfig
    from sae.io.hub import split_repo_id

    snapshot(hub_cache, "someone/repo")
    save(tiny(0), tmp_path / "outside")  # what '../../../../outside' resolves to from the snapshot
    escape = "../../../../outside"
    for source, sae_id in [
        (f"someone/repo/{escape}", None),
        ("someone/repo", escape),
        ("someone/repo", str(tmp_path / "outside")),
        ("someone/repo", "..\\..\\outside"),
    ]:
        with pytest.raises(ValueError) as e:
            sae_pkg.load(source, sae_id)
        assert "refused" in str(e.value) and "\n" not in str(e.value), (source, sae_id)
    with pytest.raises(ValueError, match="'..' part"):
        split_repo_id(f"someone/repo/{escape}")
    assert split_repo_id("someone/repo/layers.3") == ("someone/repo", "layers.3")
    with pytest.raises(ConfigError, match="'..' part"):
        EvalConfig([f"someone/repo/{escape}"])


@pytest.mark.parametrize("command", ["export", "eval"])
def test_hub_path_leaving_the_repo_is_one_line_in_every_command(command, tmp_path):
    """Pins issue 30.6: `sae export 'org/name/../x'` printed a ValueError traceback (exit 1)
    because only `sae eval`'s config turned the Hub-path refusal into a ConfigError. The refusal
    is a ConfigError where it is raised, so every command prints one line and exits 2."""
    import subprocess
    import sys

    args = {
        "export": ["export", "org/name/../x", "--format", "saelens", "--out", str(tmp_path / "o")],
        "eval": ["eval", "org/name/../x", "--out", str(tmp_path / "o")],
    }[command]
    r = subprocess.run([sys.executable, "-m", "sae", *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'..' part" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
