"""`sae export SAE_DIR --format saelens|neuronpedia|dashboard --out DIR`.

    sae export checkpoints/default/final/resid_post.3-topk-3072-k32 --format dashboard --out site
    sae export SAE_DIR --format neuronpedia --out np --np-model-id all-minilm-l6-v2
    sae export SAE_DIR --format saelens --out hub/l3 --report reports/default
    sae eval SAE_DIR --suite records,capacity --out reports/r && sae export SAE_DIR --report reports/r --format dashboard --out site

dashboard and neuronpedia read feature records: those in `--report` (a `sae eval` report folder
that ran the records suite), else they are made by a records pass into OUT/report (the SAE's
own held-out text by default, `--data.*` or `--activations` otherwise; resumable). The latents
table in that report folder (every column any suite wrote) goes into the dashboard's index.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import tyro

from sae.config import ConfigError, first_line
from sae.config.parse import parse_cli
from sae.config.schema import DataConfig
from sae.eval.config import given_data_fields

Format = Literal["saelens", "neuronpedia", "dashboard"]
FORMATS: tuple[str, ...] = get_args(Format)


@dataclass
class ExportConfig:
    """`sae export SAE_DIR --format saelens|neuronpedia|dashboard --out DIR`."""

    sae_dir: tyro.conf.Positional[str]
    """the SAE to export: a folder of any layout `sae.load` reads, or a Hub repo id."""
    format: Format = "dashboard"
    """saelens (v6 folder + README.md model card), neuronpedia (batch JSON), dashboard (HTML)."""
    out: str = "export"
    """output folder."""
    report: str | None = None
    """a `sae eval` report folder holding this SAE's records (and latents.parquet); default
    OUT/report, where a records pass is run when none is there yet."""
    suite: str = "records"
    """suites run when records are made here (records is always included), e.g. records,capacity."""
    eval_tokens: int = 100_000
    """tokens the records pass reads (whole windows until this is reached)."""
    activations: str | None = None
    """read activations from this cache or [tokens, d_in] file instead of running the model."""
    data: DataConfig = field(default_factory=lambda: DataConfig(part="eval"))
    """text for the records pass; the SAE's recorded held-out windows unless a field is given
    (a local data.source recorded there is read only when --data.source names it)."""
    model_name: str | None = None
    """the model the records pass runs (Hub name or local folder); None: the one the SAE's
    metadata records (a local folder recorded there is run only when named here)."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda', ..."""
    batch_windows: int = 16
    """windows per model forward pass."""
    trust_remote_code: bool | None = None
    """run the model repository's own code in the records pass (True only on the command line:
    an SAE whose metadata records model_trust_remote_code: true is refused without it)."""
    seed: int = 0
    """seed of the records' bin samples."""
    np_model_id: str | None = None
    """Neuronpedia model id; default: the model's folder/repo name, lower-cased."""
    np_sae_set: str | None = None
    """Neuronpedia SAE set name; default: the SAE folder's name."""
    np_layer: int | None = None
    """Neuronpedia layer; default: the block number in the hook name."""


def _check(cfg: ExportConfig):
    """Every flag checked, then the SAE loaded (any layout `sae.load` reads, or a Hub repo id);
    a bad one is one ConfigError before any work. Returns the SAE."""
    from sae.io import load
    from sae.io.hub import split_repo_id

    folder = Path(cfg.sae_dir)
    if not folder.is_dir() and (folder.exists() or split_repo_id(cfg.sae_dir) is None):
        raise ConfigError(
            f"SAE folder {cfg.sae_dir!r} does not exist or is not a folder (nor a Hub repo id)."
        )
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not one of {', '.join(map(repr, FORMATS))}.")
    if Path(cfg.out).is_file():
        raise ConfigError(f"out={cfg.out!r} is a file; the export needs a folder.")
    _check_out(cfg)
    if cfg.report is not None and Path(cfg.report).is_file():
        raise ConfigError(f"report={cfg.report!r} is a file; give a `sae eval` report folder.")
    if cfg.eval_tokens <= 0:
        raise ConfigError(f"eval_tokens={cfg.eval_tokens} must be a positive count.")
    try:
        return load(folder if folder.exists() else cfg.sae_dir)
    except Exception as e:  # missing files, bad JSON, corrupt weights, unknown layout
        first = first_line(e)
        raise ConfigError(f"cannot load SAE {cfg.sae_dir!r}: {first}") from None


def _check_out(cfg: ExportConfig) -> None:
    """OUT (and the records pass's OUT/report, and the dashboard's OUT/latents) must be new,
    empty, or written by this package as that kind (sae/fsutil.py's marker): files there are
    replaced and folders swapped whole, so anything else is refused before any work."""
    from sae.fsutil import require_ours

    out = Path(cfg.out)
    if cfg.format == "saelens":
        require_ours(out, "sae")
        return
    require_ours(out, "export")
    require_ours(out / "latents", "export")
    if cfg.report is None:
        require_ours(out / "report", "report")


def _stale(folder: Path, cfg: ExportConfig, given: list[str], sae) -> bool:
    """Records must be (re)made: none, unfinished, or made from another SAE, token count, data
    or activations than asked (the pass itself reuses or resumes whatever still matches). A
    `--data.*` field given with the value the records were read with asks for the same data (a
    local data.source must be named on every command line: sae.config.trust)."""
    from sae.eval.records import sae_sha256
    from sae.io.records import RecordError, RecordsInfo

    if not (folder / RecordsInfo.FILE).is_file() or (folder / "state.json").is_file():
        return True
    if cfg.activations is not None:
        return True
    try:
        info = RecordsInfo.read(folder)
    except RecordError:  # unreadable records are remade (the pass replaces them)
        return True
    read = info.activations.get("data") or {}
    if any(name not in read or read[name] != getattr(cfg.data, name) for name in given):
        return True
    ident = info.identity
    return ident.get("eval_tokens") != cfg.eval_tokens or ident.get("sae_sha256") != sae_sha256(sae)


def _records(cfg: ExportConfig, given: list[str], sae):
    """The SAE's records (made now if the report folder has none) and their provenance."""
    from sae.eval import EvalConfig, run_eval
    from sae.export.view import Records

    report = Path(cfg.report) if cfg.report else Path(cfg.out) / "report"
    name = Path(cfg.sae_dir).resolve().name
    folder = report / name / "records"
    if _stale(folder, cfg, given, sae):
        suites = [
            "records",
            *[s for s in cfg.suite.split(",") if s.strip() and s.strip() != "records"],
        ]
        ecfg = EvalConfig(
            [cfg.sae_dir],
            suite=",".join(suites),
            activations=cfg.activations,
            data=DataConfig(**dataclasses.asdict(cfg.data)),
            data_fields=given,
            eval_tokens=cfg.eval_tokens,
            n_boot=0,
            seed=cfg.seed,
            device=cfg.device,
            batch_windows=cfg.batch_windows,
            model_name=cfg.model_name,
            trust_remote_code=cfg.trust_remote_code,
            out=str(report),
        )
        run_eval(ecfg, [sae])  # the SAE _check loaded: every format loads it once
    return Records.open(folder), report


def run_export(cfg: ExportConfig, given: list[str] | None = None) -> Path:
    sae = _check(cfg)
    out, src = Path(cfg.out), Path(cfg.sae_dir)
    if cfg.format == "saelens":
        from sae.export.saelens import export_saelens

        return export_saelens(sae, src, out, Path(cfg.report) if cfg.report else None)
    from sae.fsutil import MARKER, claim, remove

    created = not out.exists()
    claim(out, "export")  # before the records pass writes its report into OUT/report
    try:
        rec, _ = _records(cfg, given or [], sae)
    except BaseException:
        if created and [p.name for p in out.iterdir()] == [MARKER]:
            remove(out, "export")  # a bad input the records pass found leaves no folder behind
        raise
    prov = rec.info.activations
    title = src.resolve().name
    if cfg.format == "dashboard":
        from sae.export.dashboard import write_dashboard

        return write_dashboard(rec, out, title, prov)
    from sae.export.neuronpedia import layer_of, write_neuronpedia

    model = str(prov.get("model") or "model")
    model_id = cfg.np_model_id or Path(model.rstrip("/")).name.lower()
    layer = cfg.np_layer if cfg.np_layer is not None else layer_of(prov.get("hook"))
    write_neuronpedia(rec, out, model_id, cfg.np_sae_set or title, layer, prov)
    return out


def cli_main(argv: list[str]) -> str:
    """Parse the flags (every bad value one line), then export; returns the output's path."""
    cfg = parse_cli(ExportConfig, None, argv, "sae export")
    return str(run_export(cfg, given_data_fields(argv)))
