"""Trust (issue 30 item 2): a model's own code runs only when this command line says
so, resume included; an SAE's metadata never makes a command read a local file the user did not
name; a dataset's loading script never runs.

The model here is the tiny GPT-2 with an `auto_map` whose code writes a marker file when it is
imported, as a hostile Hub repo's would."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sae.cli import main
from sae.io import save
from sae.model.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def evil_model(tiny_models, tmp_path) -> tuple[Path, Path]:
    """(model folder, marker): a loadable model whose repository code writes the marker."""
    model, marker = tmp_path / "evil-model", tmp_path / "remote-code-ran"
    shutil.copytree(tiny_models["gpt2"], model)
    (model / "evil.py").write_text(  # on import, and on each load (an import is cached)
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n\n\n"
        "class EvilConfig(GPT2Config):\n"
        "    def __init__(self, **kw):\n"
        f"        open({str(marker)!r}, 'w').write('ran')\n"
        "        super().__init__(**kw)\n\n\n"
        "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n"
    )
    cfg = json.loads((model / "config.json").read_text())
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(cfg | {"auto_map": auto}))
    return model, marker


def _train_args(model: Path, text_file: str, out: Path) -> list[str]:
    return ["--model.name", str(model), "--model.hooks", "resid_post.1", "--data.source",
            text_file, "--data.context-size", "16", "--sae.d-sae", "64", "--sae.k", "4",
            "--store.batch-size", "64", "--store.buffer-tokens", "256", "--total-tokens", "2048",
            "--eval-tokens", "64", "--quiet", "--out", str(out)]  # fmt: skip


def _refused(capsys, argv: list[str]) -> str:
    """The one line `sae ARGV` stops with (exit code 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_yaml_trust_remote_code_runs_nothing_without_the_flag(
    evil_model, text_file, tmp_path, capsys
):
    """Pins issue 30.2: `model.trust_remote_code: true` in a YAML config made `sae train` and
    `sae harvest` import and run the model repository's code with no flag on the command line.
    Now both stop in one line naming --model.trust-remote-code before any work; the flag (or
    --model.no-trust-remote-code) is this command line's own decision."""
    model, marker = evil_model
    config = tmp_path / "trusting.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"name": str(model), "hooks": ["resid_post.1"],
                                  "trust_remote_code": True},
                        "data": {"source": text_file, "context_size": 16}})
    )  # fmt: skip
    for command in ("train", "harvest"):
        out = tmp_path / f"{command}-out"
        err = _refused(capsys, [command, str(config), "--out", str(out), "--quiet"])
        assert "model.trust_remote_code: true in" in err and "trusting.yaml" in err, err
        assert "--model.trust-remote-code" in err
        assert not marker.exists() and not out.exists()

    from sae.config.parse import parse
    from sae.config.schema import HarvestConfig

    off = parse(HarvestConfig, [str(config), "--model.no-trust-remote-code"], "sae harvest")
    assert off.model.trust_remote_code is False
    on = parse(HarvestConfig, [str(config), "--model.trust-remote-code"], "sae harvest")
    assert on.model.trust_remote_code is True


def test_resume_of_a_trusting_run_needs_the_flag_again(
    evil_model, text_file, tmp_path, capsys, monkeypatch
):
    """Pins issue 30.2: `sae train --resume --out DIR` starts from DIR/config.yaml, and a run
    started with --model.trust-remote-code saved `trust_remote_code: true` there, so the resume
    ran the model's code again with no flag. Now it stops in one line naming the flag, runs
    nothing, leaves the run as it was; with the flag given again it resumes."""
    from sae.training.train import Trainer

    model, marker = evil_model
    out = tmp_path / "run"
    real = Trainer._step

    def step_then_stop(self, m, batch, lr, sparsity):
        real(self, m, batch, lr, sparsity)
        if self.step == 8:
            self._stop_signal = 2  # as SIGINT does: checkpoint, then exit 130

    monkeypatch.setattr(Trainer, "_step", step_then_stop)
    with pytest.raises(SystemExit) as e:
        main(["train", *_train_args(model, text_file, out), "--model.trust-remote-code"])
    assert e.value.code == 130 and marker.exists()
    monkeypatch.setattr(Trainer, "_step", real)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["trust_remote_code"]
    marker.unlink()
    capsys.readouterr()
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    err = _refused(capsys, ["train", "--resume", "--out", str(out)])
    assert "config.yaml" in err and "--model.trust-remote-code" in err, err
    assert not marker.exists()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before

    main(["train", "--resume", "--out", str(out), "--model.trust-remote-code"])
    assert marker.exists() and (out / "final").is_dir()


def _sae_recording_data(folder: Path, model: str, data: dict) -> Path:
    save(SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4)), folder,
         metadata=dict(model_name=model, hook_name="resid_post.1", context_size=16, data=data))  # fmt: skip
    return folder


def _everything_under(root: Path) -> str:
    return "".join(
        p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()
    )


SECRET = "kangaroo"  # one word-piece of the tiny BERT's vocabulary: whole in any output


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "SAE", "--suite", "records", "--out", "OUT"],
        ["export", "SAE", "--format", "neuronpedia", "--out", "OUT"],
        ["export", "SAE", "--format", "dashboard", "--out", "OUT"],
    ],
    ids=["eval-records", "export-neuronpedia", "export-dashboard"],
)
def test_metadata_cannot_make_a_command_read_a_local_file(argv, tiny_models, tmp_path, capsys):
    """Pins issue 30.2: an SAE's cfg.json (anyone's: from the Hub, another library's folder)
    recording `data.source` = a private local file made `sae eval --suite records` and `sae
    export` read it, putting its text into the records, the Neuronpedia batch and the
    dashboard. Now each stops in one line naming --data.source, writes nothing, and the secret
    is in no output; the same file named with --data.source on the command line is read."""
    private = tmp_path / "private" / "notes.txt"
    private.parent.mkdir()
    private.write_text(f"my bank password is {SECRET}. " * 40)
    folder = _sae_recording_data(
        tmp_path / "downloaded-sae", tiny_models["bert"], {"source": str(private)}
    )
    out = tmp_path / "out"
    words = [str(folder) if w == "SAE" else str(out) if w == "OUT" else w for w in argv]
    words += ["--eval-tokens", "64", "--batch-windows", "4", "--model-name", tiny_models["bert"]]
    err = _refused(capsys, words)
    assert f"data.source={str(private)!r}" in err and "--data.source" in err, err
    assert not out.exists()

    main([*words, "--data.source", str(private)])  # the user names it: it is read
    assert SECRET in _everything_under(out)


def test_run_config_above_an_sae_cannot_name_a_local_file(tiny_models, tmp_path, capsys):
    """Pins issue 30.2: with no data in its cfg.json, `sae eval` took the data source from the
    run's config.yaml two folders above the SAE (a downloaded checkpoints folder carries one)
    and read the local file it named. Now that is refused in one line as well; a Hub name or
    the built-in corpus recorded there is still used."""
    private = tmp_path / "secret.txt"
    private.write_text(f"{SECRET} " * 200)
    run = tmp_path / "run"
    folder = run / "final" / "resid_post.1-topk"
    folder.parent.mkdir(parents=True)
    save(SAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4)), folder,
         metadata=dict(model_name=tiny_models["gpt2"], hook_name="resid_post.1",
                       context_size=16))  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"source": str(private)}}))
    out = tmp_path / "rep"
    named = ["--model-name", tiny_models["gpt2"]]  # the model is local too: named by the user
    err = _refused(capsys, ["eval", str(folder), "--suite", "records", "--out", str(out),
                            "--eval-tokens", "64", *named])  # fmt: skip
    assert "run config" in err and "--data.source" in err and not out.exists(), err

    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "builtin"}}))
    main(["eval", str(folder), "--suite", "core", "--out", str(out), "--eval-tokens", "64",
          "--n-boot", "0", *named])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["saes"][0]["activations"]["data"]["source"] == "builtin"


def _sae_of_model(folder: Path, model: str, d_in: int = 32) -> Path:
    """An SAE whose cfg.json records `model` and the built-in text (nothing else local)."""
    save(SAE(SAEConfig(architecture="topk", d_in=d_in, d_sae=64, k=4)), folder,
         metadata=dict(model_name=model, hook_name="resid_post.1", context_size=16,
                       data={"source": "builtin"}))  # fmt: skip
    return folder


@pytest.mark.parametrize(
    "command",
    [["eval", "--suite", "core", "--n-boot", "0"], ["export", "--format", "dashboard"]],
    ids=["eval", "export-dashboard"],
)
def test_recorded_local_model_runs_only_when_named(command, tiny_models, tmp_path, capsys):
    """Pins issue 30.2 (the model): an SAE's cfg.json (anyone's) recording `model_name` = a
    local folder made `sae eval` and `sae export` load it, its tokenizer's words reaching the
    dashboard. Now each stops in one line naming --model-name, before any output folder is
    written; the same folder named with --model-name on the command line is run."""
    model = tiny_models["gpt2"]
    folder = _sae_of_model(tmp_path / "downloaded-sae", model)
    out = tmp_path / "out"
    words = [command[0], str(folder), *command[1:], "--out", str(out), "--eval-tokens", "64",
             "--batch-windows", "4"]  # fmt: skip
    err = _refused(capsys, words)
    assert f"model_name={model!r}" in err and f"--model-name {model}" in err, err
    assert not out.exists()

    main([*words, "--model-name", model])  # the user names it: it is run
    report = out if command[0] == "eval" else out / "report"
    entry = json.loads((report / "report.json").read_text())["saes"][0]
    assert entry["activations"]["model"] == model
    if command[0] == "export":
        assert (out / "index.html").is_file()


def test_recorded_builtin_model_needs_no_flag(tmp_path):
    """Pins the rule's edge for the model: 'builtin' (the packaged MiniLM) recorded in an SAE's
    metadata is not a local file the user must name, so `sae eval` runs it with no flag, and
    `--model-name builtin` gives the same report (--model-name is new with the rule)."""
    folder = _sae_of_model(tmp_path / "sae", "builtin", d_in=384)
    for name, extra in (("plain", []), ("named", ["--model-name", "builtin"])):
        main(["eval", str(folder), "--suite", "core", "--n-boot", "0", "--eval-tokens", "32",
              "--batch-windows", "2", "--out", str(tmp_path / name), *extra])  # fmt: skip
    plain, named = (
        json.loads((tmp_path / n / "report.json").read_text())["saes"][0]
        for n in ("plain", "named")
    )
    assert plain["activations"]["model"] == named["activations"]["model"] == "builtin"
    assert plain["results"]["core"]["tokens"] >= 32
    assert plain["results"]["core"]["reconstruction"] == named["results"]["core"]["reconstruction"]


def test_recorded_hub_name_is_not_refused_as_local(tiny_models, tmp_path, capsys):
    """Pins the rule's edge for the model: a Hub name recorded in an SAE's metadata that exists
    nowhere here is not a local file, so the local-file rule lets it through (here it then
    fails only because the Hub is offline in the tests); a user holding that model in a folder
    runs it with --model-name."""
    hub = "someone/tiny-gpt2-nowhere-here"
    folder = _sae_of_model(tmp_path / "sae", hub)
    out = tmp_path / "rep"
    words = ["eval", str(folder), "--suite", "core", "--n-boot", "0", "--eval-tokens", "64",
             "--batch-windows", "4", "--out", str(out)]  # fmt: skip
    err = _refused(capsys, words)
    assert hub in err and "reachable Hub model" in err, err  # offline: tried, not refused
    assert "a local path" not in err and "--model-name" not in err, err

    main([*words, "--model-name", tiny_models["gpt2"]])
    entry = json.loads((out / "report.json").read_text())["saes"][0]
    assert entry["model"] == hub and entry["activations"]["model"] == tiny_models["gpt2"]


def test_local_or_hub_names_from_metadata(tmp_path, monkeypatch):
    """Pins the rule's edge: a recorded name is local when the loaders would read it from this
    machine (it exists here, or is written as a path), so a Hub-shaped 'org/name' that exists as
    a folder under the working directory is local too; 'builtin' and Hub names are not."""
    from sae.config.trust import is_local

    monkeypatch.chdir(tmp_path)
    for name in ("builtin", "wikitext", "org/name", "EleutherAI/pythia-70m"):
        assert not is_local(name), name
    for name in ("/etc/passwd", "./x", "~/notes", "corpus.txt", "rows.jsonl", "a\\b", "C:/d"):
        assert is_local(name), name
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert is_local("org/name")


def test_dataset_loading_script_never_runs(tiny_models, tmp_path, capsys):
    """Pins issue 30.2: a dataset folder (or Hub repo) holding a loading script `NAME.py` ran it
    under `datasets` 2.x/3.x when remote code was allowed (HF_DATASETS_TRUST_REMOTE_CODE or
    their default), and pyproject.toml allowed datasets>=2.18. datasets 4.0 removed loading
    scripts altogether, and pyproject now requires it: the script never runs and the command
    stops in one line."""
    folder = tmp_path / "evilset"
    folder.mkdir()
    marker = tmp_path / "script-ran"
    (folder / "evilset.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "rows.jsonl").write_text('{"text": "hello world"}\n' * 50)
    out = tmp_path / "cache"
    err = _refused(capsys, ["harvest", "--model.name", tiny_models["gpt2"], "--model.hooks",
                            "resid_post.1", "--data.source", str(folder), "--data.context-size",
                            "16", "--out", str(out), "--quiet"])  # fmt: skip
    assert "data.source=" in err and "evilset.py" in err, err
    assert not marker.exists() and not out.exists()

    (floor,) = re.findall(r'^\s*"datasets>=([\d.]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert tuple(map(int, floor.split("."))) >= (4, 0), floor
