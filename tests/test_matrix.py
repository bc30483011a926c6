"""The dtype/device matrix: every command and suite on a tiny model in float32 and bfloat16.

    python -m pytest tests/test_matrix.py                        # CPU (part of the default suite)
    SAE_TEST_DEVICE=cuda python -m pytest tests/test_matrix.py   # the same matrix on a GPU

`model.dtype: auto` picks bfloat16 on every CUDA GPU of compute capability >= 8.0 and on CPUs
with AVX512-BF16 or AMX, while the rest of the suite pins auto to float32 (tests/conftest.py), so
a bf16-only failure (issue 24: the interaction suite's "mat1 and mat2 must have the same dtype")
once landed unseen. Here every row names its dtype explicitly, whatever the pin:

- `sae train` of every architecture (one sweep over one activation stream) and a transcoder, with
  `--autocast false` and `--autocast true`;
- `sae harvest` (storage in the model's dtype), then `sae train` and `sae eval` from that cache;
- `sae eval` with every suite (`synthetic` on a synthetic run, which has no model dtype);
- `sae export` in every format;
- `sae.load`, every suite and every export on SAEs other libraries wrote: a SAELens folder, a
  sparsify folder, a dictionary_learning folder, and a Hub repo id (a local Hub cache, offline).

Work is shared through module-scoped fixtures (one training sweep per dtype and autocast setting,
all suites in one `sae eval` call per SAE), with the smallest budgets every suite accepts.
SAE_TEST_DEVICE=cuda skips the module where CUDA is absent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

import sae as sae_pkg
from sae.cli import COMMANDS
from sae.io import save
from sae.model.sae import SAE, SAEConfig

DEVICE = os.environ.get("SAE_TEST_DEVICE", "cpu")
DTYPES = ("float32", "bfloat16")
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
LIVE_SUITES = "core,redundancy,capacity,descramble,interaction,records,interpret,absorption"
FILE_SUITES = "core,redundancy,capacity,descramble,records"
FORMATS = ("saelens", "neuronpedia", "dashboard")
FAMILY = "bert"  # its tokenizer (MiniLM's) has the words the absorption suite needs
HOOK = "resid_post.1"
D, S, K = 32, 64, 4
BUDGETS = [  # the smallest budgets each suite accepts: this checks that it runs, not its figures
    "--eval-tokens", "128", "--n-boot", "0", "--batch-windows", "4",
    "--interaction.window-tokens", "16", "--interaction.moment-tokens", "64",
    "--interaction.mprime-tokens", "32", "--interaction.edge-tokens", "32",
    "--interaction.edge-positions", "2", "--interaction.out-directions", "4",
    "--interaction.ablation-tokens", "32",
]  # fmt: skip

if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"SAE_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sae_cmd(command: str, *argv: str) -> str:
    """Run `sae COMMAND ARGV...` in-process (errors raise instead of exiting); its last line."""
    return COMMANDS[command](list(argv))


def autocast_args(on: bool) -> list[str]:
    """bf16 autocast of the SAE step on or off (TrainConfig.autocast)."""
    return ["--autocast", "true" if on else "false"]


def data_args(text_file: str) -> list[str]:
    return ["--data.source", text_file, "--data.context-size", "16"]


def train_args(model: str, dtype: str, text_file: str) -> list[str]:
    return [
        "--model.name", model, "--model.hooks", HOOK, "--model.dtype", dtype,
        "--model.device", DEVICE, *data_args(text_file), "--sae.d-sae", str(S), "--sae.k", str(K),
        "--store.batch-size", "64", "--store.buffer-tokens", "256", "--eval-tokens", "128",
        "--quiet",
    ]  # fmt: skip


def finite_floats(obj, where: str = "") -> None:
    """Every float in a JSON tree is finite (NaN/inf would mean a dtype overflow or 0/0)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            finite_floats(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            finite_floats(v, f"{where}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), where


def run_eval(saes: list[str], out: Path, *extra: str) -> list[dict]:
    """`sae eval` over `saes`; each SAE's report entry, checked for completeness."""
    sae_cmd("eval", *saes, *BUDGETS, "--device", DEVICE, "--out", str(out), *extra)
    entries = json.loads((out / "report.json").read_text())["saes"]
    assert len(entries) == len(saes)
    return entries


def check_entry(entry: dict, suites: str, dtype: str | None) -> None:
    """Every suite asked for reported results, every figure finite, the model in `dtype`."""
    assert sorted(entry["results"]) == sorted(suites.split(",")), entry["results"].keys()
    finite_floats(entry["results"], entry["name"])
    if dtype is not None:
        assert entry["activations"]["model_load"]["dtype"] == dtype


def check_exports(sae_dir: str, out: Path, *extra: str) -> None:
    """Every export format of one SAE: the files each format promises."""
    for fmt in FORMATS:
        dest = out / fmt
        got = Path(sae_cmd("export", sae_dir, "--format", fmt, "--out", str(dest), *extra))
        assert dest in (got, got.parent)
        if fmt == "saelens":
            again = sae_pkg.load(dest)
            assert again.cfg.d_sae == S and (dest / "README.md").is_file()
        elif fmt == "neuronpedia":
            batch = json.loads((dest / "batch-0.json").read_text())
            assert len(batch["features"]) == S
        else:
            assert (dest / "index.html").is_file()


# ---- training: every architecture, float32 and bfloat16, autocast off and on -----------------


@pytest.fixture(scope="module")
def runs(tiny_models, text_file, tmp_path_factory):
    """(dtype, autocast) -> {architecture or 'transcoder': final SAE folder}, trained on first
    use: one sweep of every architecture plus a transcoder over one activation stream."""
    made: dict[tuple[str, bool], dict[str, str]] = {}

    def get(dtype: str, autocast: bool) -> dict[str, str]:
        if (dtype, autocast) not in made:
            out = tmp_path_factory.mktemp(f"train-{dtype}-{autocast}")
            sweep = [f"architecture={a}" for a in ARCHS] + ["target_hook=resid_post.2"]
            sae_cmd(
                "train",
                *train_args(tiny_models[FAMILY], dtype, text_file),
                "--total-tokens", "1024", *autocast_args(autocast),
                "--sweep", *sweep, "--out", str(out),
            )  # fmt: skip
            finals = sorted((out / "final").iterdir())
            assert len(finals) == len(sweep)
            made[dtype, autocast] = dict(zip([*ARCHS, "transcoder"], map(str, finals), strict=True))
            run_cfg = yaml.safe_load((out / "config.yaml").read_text())
            assert run_cfg["model"]["dtype"] == dtype and run_cfg["autocast"] is autocast
        return made[dtype, autocast]

    return get


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_train_every_architecture(runs, dtype, autocast):
    """Pins: `sae train` of each architecture (and a transcoder) finishes on a model computing in
    `dtype`, with and without bf16 autocast of the SAE step; each folder loads with finite
    weights, records the model dtype, and its held-out FVU is finite."""
    for arch, folder in runs(dtype, autocast).items():
        model = sae_pkg.load(folder)
        assert model.cfg.architecture == ("topk" if arch == "transcoder" else arch)
        assert model.metadata["model_dtype"] == dtype
        for name, p in model.state_dict().items():
            assert torch.isfinite(p).all(), (arch, name)
        summary = json.loads((Path(folder) / "train_summary.json").read_text())
        assert math.isfinite(summary["fvu"]), arch


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_suite_and_export(runs, dtype, tiny_models, text_file, tmp_path):
    """Pins issue 24's `RuntimeError: mat1 and mat2 must have the same dtype, but got Float and
    BFloat16` (the interaction suite on a bfloat16 model): every live suite on one SAE, the core
    suite on every architecture and the transcoder, and every export format, with the model in
    `dtype`. The runs' model and text are local, so each command names them (sae.config.trust)."""
    saes = runs(dtype, False)
    data = [*data_args(text_file), "--model-name", tiny_models[FAMILY]]
    (entry,) = run_eval([saes["topk"]], tmp_path / "all", "--suite", LIVE_SUITES, *data)
    check_entry(entry, LIVE_SUITES, dtype)
    for entry in run_eval(list(saes.values()), tmp_path / "core", "--suite", "core", *data):
        check_entry(entry, "core", dtype)
    check_exports(
        saes["topk"], tmp_path / "export", "--device", DEVICE, "--eval-tokens", "128", *data
    )


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
def test_synthetic_run_and_suite(autocast, tmp_path):
    """Pins: `sae train --activations synthetic` and the synthetic suite, with and without bf16
    autocast (synthetic data has no model, so no model dtype)."""
    config = tmp_path / "synthetic.yaml"
    config.write_text("synthetic: {d_in: 16, n_features: 48, mean_active: 3.0}\n")
    folder = sae_cmd(
        "train", str(config), "--activations", "synthetic", "--model.device", DEVICE,
        "--total-tokens", "2048",
        "--sae.d-sae", "48", "--sae.k", "3", "--store.batch-size", "64",
        "--store.buffer-tokens", "256", "--eval-tokens", "256", *autocast_args(autocast),
        "--quiet", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    (entry,) = run_eval([folder], tmp_path / "rep", "--suite", "synthetic")
    check_entry(entry, "synthetic", None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_harvest_then_train_and_eval_from_the_cache(tiny_models, text_file, dtype, tmp_path):
    """Pins: `sae harvest` with the model in `dtype` storing `dtype` activations, then `sae train`
    and `sae eval` (every suite that takes an activation file) reading that cache."""
    cache = tmp_path / "cache"
    sae_cmd(
        "harvest", "--model.name", tiny_models[FAMILY], "--model.hooks", HOOK,
        "--model.dtype", dtype, "--model.device", DEVICE, *data_args(text_file),
        "--dtype", dtype, "--shard-tokens", "256", "--max-tokens", "1024", "--quiet",
        "--out", str(cache),
    )  # fmt: skip
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["dtype"] == dtype
    folder = sae_cmd(
        "train", "--activations", str(cache), "--eval-activations", str(cache),
        "--model.name", tiny_models[FAMILY], "--model.hooks", HOOK, "--model.device", DEVICE, "--sae.d-sae", str(S), "--sae.k", str(K),
        "--store.batch-size", "64", "--store.buffer-tokens", "256", "--eval-tokens", "128",
        "--quiet", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    (entry,) = run_eval([folder], tmp_path / "rep", "--suite", FILE_SUITES, "--activations",
                        str(cache))  # fmt: skip
    check_entry(entry, FILE_SUITES, None)


# ---- SAEs other libraries wrote: sae.load, every suite, every export ------------------------


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(S, D, generator=g) / D**0.5
    return {"W": W, "b": 0.01 * torch.randn(S, generator=g), "b_dec": torch.zeros(D)}


def saelens_folder(root: Path, model: str) -> str:
    """A folder SAELens itself saved (StandardSAE.save_model), naming its hook the
    TransformerLens way."""
    sl = pytest.importorskip("sae_lens")
    torch.manual_seed(0)
    meta = sl.saes.sae.SAEMetadata(
        model_name=model, hook_name="blocks.1.hook_resid_pre", context_size=16
    )
    theirs = sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=S, metadata=meta))
    theirs.save_model(str(root / "saelens"))
    return str(root / "saelens")


def sparsify_folder(root: Path, model: str) -> str:
    """What sparsify's save_to_disk writes: one folder per hookpoint (a module path inside the
    base model) with cfg.json and sae.safetensors, the run's config.json above it."""
    from safetensors.torch import save_file

    w = _weights(1)
    (root / "sparsify" / "encoder.layer.1").mkdir(parents=True)
    (root / "sparsify" / "config.json").write_text(json.dumps({"model": model}))
    folder = root / "sparsify" / "encoder.layer.1"
    (folder / "cfg.json").write_text(json.dumps({"k": K, "num_latents": S, "d_in": D}))
    state = {"encoder.weight": w["W"], "encoder.bias": w["b"], "W_dec": w["W"].clone(),
             "b_dec": w["b_dec"]}  # fmt: skip
    save_file(state, str(folder / "sae.safetensors"))
    return str(folder)


def dictionary_learning_folder(root: Path, model: str) -> str:
    """What dictionary_learning's trainSAE writes for an AutoEncoderTopK: config.json and ae.pt
    (a state dict of tensors)."""
    w = _weights(2)
    folder = root / "dl" / "trainer_0"
    folder.mkdir(parents=True)
    trainer = {"dict_class": "AutoEncoderTopK", "activation_dim": D, "dict_size": S, "k": K,
               "lm_name": model, "layer": 1, "submodule_name": "resid_post_layer_1"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {}}))
    state = {"encoder.weight": w["W"], "encoder.bias": w["b"], "decoder.weight": w["W"].T.clone(),
             "b_dec": w["b_dec"], "k": torch.tensor(K), "threshold": torch.tensor(-1.0)}  # fmt: skip
    torch.save(state, folder / "ae.pt")
    return str(folder)


def hub_repo(root: Path, model: str) -> str:
    """An SAE in a Hugging Face Hub repo, read offline from a local Hub cache (huggingface_hub's
    layout: models--org--name/refs/main -> snapshots/<rev>/)."""
    repo = root / "hub" / "models--someone--tiny-saes"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    torch.manual_seed(3)
    meta = {"model_name": model, "hook_name": HOOK, "context_size": 16}
    save(SAE(SAEConfig(architecture="topk", d_in=D, d_sae=S, k=K)),
         repo / "snapshots" / rev / "layer1", metadata=meta)  # fmt: skip
    return "someone/tiny-saes/layer1"


FOREIGN = {
    "saelens": saelens_folder,
    "sparsify": sparsify_folder,
    "dictionary_learning": dictionary_learning_folder,
    "hub": hub_repo,
}


@pytest.fixture(scope="module")
def foreign(tiny_models, tmp_path_factory):
    """layout -> what to pass to `sae.load` and `sae eval` (SAELens only where sae-lens is
    installed); the Hub cache is this module's, read offline."""
    root = tmp_path_factory.mktemp("foreign")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(root / "hub"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        made = {}
        for layout, make in FOREIGN.items():
            if layout != "saelens" or importlib.util.find_spec("sae_lens") is not None:
                made[layout] = make(root, tiny_models[FAMILY])
        yield made


@pytest.mark.parametrize("dtype", DTYPES)
def test_foreign_saes_in_every_suite_and_export(foreign, dtype, tiny_models, text_file, tmp_path):
    """Pins issue 24: the records suite hashed `sae_weights.safetensors` by path and crashed
    with FileNotFoundError for sparsify and dictionary_learning folders and Hub ids, and `sae
    export` refused them. Every SAE `sae.load` takes runs with the model in `dtype`
    (--model-dtype fills in what foreign metadata does not record): in bfloat16 every suite, in
    float32 core and records (the other suites' float32 paths are the rest of the test suite's);
    then every export format of each, from that report."""
    for layout, source in foreign.items():
        model = sae_pkg.load(source)
        assert (model.cfg.d_in, model.cfg.d_sae) == (D, S), layout
    suites = LIVE_SUITES if dtype == "bfloat16" else "core,records"
    rep = tmp_path / "rep"
    named = ["--model-name", tiny_models[FAMILY]]  # their metadata records the local model
    extra = ["--suite", suites, "--model-dtype", dtype, *data_args(text_file), *named]
    entries = run_eval(list(foreign.values()), rep, *extra)
    for entry, source in zip(entries, foreign.values(), strict=True):
        check_entry(entry, suites, dtype)
        local = Path(source).exists()  # a Hub repo id is reported as given, not as a path here
        assert entry["folder"] == (str(Path(source).resolve()) if local else source)
    for layout, source in foreign.items():
        check_exports(source, tmp_path / layout, "--report", str(rep), "--eval-tokens", "128",
                      "--device", DEVICE, *named)  # fmt: skip
