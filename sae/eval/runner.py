"""Load the SAEs, check every input, build each SAE's activation stream, run the suites, write
the report. Everything that can be wrong is found in `prepare`, before any suite runs."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import yaml

from sae.activations.sources import MATRIX_HOOK, CacheSource, LiveSource, MatrixSource, open_source
from sae.config import ConfigError, first_line
from sae.config.schema import DataConfig, ModelConfig, StoreConfig
from sae.config.trust import not_local_from_metadata
from sae.eval.base import EvalContext, EvalTarget, SuiteResult, suite_module
from sae.eval.config import EvalConfig, parse_args
from sae.eval.stream import SYNTHETIC_HELDOUT_START
from sae.fsutil import claim, require_ours
from sae.io import load as load_sae
from sae.model.sae import SAE

_DATA_FIELDS = {f.name for f in dataclasses.fields(DataConfig)}


def _data_config(folder: Path, meta: dict, cfg: EvalConfig) -> tuple[DataConfig, str, dict | None]:
    """Held-out windows: the SAE's recorded training data (cfg.json metadata 'data', else the run's
    config.yaml two folders up), part='eval', then the --data.* fields given on the command line.
    A local data.source recorded there is read only when --data.source names it (a recorded
    source can come from anyone: sae.config.trust.not_local_from_metadata). Also returns the
    recorded training data fields (None when nothing is recorded)."""
    base, origin = None, "defaults"
    if isinstance(meta.get("data"), dict):
        base, origin = meta["data"], "cfg.json metadata"
    else:
        run_cfg = folder.parent.parent / "config.yaml"
        if run_cfg.is_file():
            try:
                raw = yaml.safe_load(run_cfg.read_text())
            except yaml.YAMLError:
                raw = None
            if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
                base, origin = raw["data"], f"run config {run_cfg}"
    fields = {k: v for k, v in (base or {}).items() if k in _DATA_FIELDS}
    if isinstance(meta.get("context_size"), int):
        fields["context_size"] = meta["context_size"]
    train = dataclasses.asdict(DataConfig(**{**fields, "part": fields.get("part", "train")}))
    fields["part"] = "eval"
    overrides = cfg.data_overrides()
    if isinstance(fields.get("source"), str) and "source" not in overrides:
        where = f"{str(folder)!r} ({origin})"
        not_local_from_metadata(fields["source"], "data.source", "--data.source", where)
    fields |= overrides
    if overrides:
        origin += f" + command line ({', '.join(overrides)})"
    return DataConfig(**fields), origin, (train if base is not None else None)


def _check_width(what: str, width: int, folder: Path, name: str, expected: int) -> None:
    if width != expected:
        raise ConfigError(
            f"{what} has width {width} but the SAE in {str(folder)!r} has {name}={expected}."
        )


def _file_target(name: str, folder: Path, sae, meta: dict, cfg: EvalConfig) -> EvalTarget:
    src = open_source(cfg.activations, ModelConfig(), DataConfig(), StoreConfig())
    hook_in, hook_out = meta.get("hook_name"), meta.get("target_hook_name")
    if isinstance(src, MatrixSource):
        if sae.cfg.d_out is not None:
            raise ConfigError(
                f"{str(folder)!r} is a transcoder: it needs its input and target hooks from an "
                f"activation cache, not the single matrix {cfg.activations!r}."
            )
        hook_in, hook_out = MATRIX_HOOK, None
    else:
        assert isinstance(src, CacheSource)
        if hook_in not in src.hooks and len(src.hooks) == 1 and not hook_out:
            hook_in = src.hooks[0]  # a single-hook cache: take it, the width check still guards
        for h in filter(None, (hook_in, hook_out)):
            if h not in src.hooks:
                raise ConfigError(
                    f"the SAE in {str(folder)!r} reads hook {h!r}, but activation cache "
                    f"{cfg.activations!r} holds {src.hooks}."
                )
    what = f"activations {cfg.activations!r}"
    _check_width(f"{what} ({hook_in})", src.d[hook_in], folder, "d_in", sae.cfg.d_in)
    if hook_out:
        _check_width(f"{what} ({hook_out})", src.d[hook_out], folder, "d_out", sae.cfg.width_out)
    prov = {**src.describe(), "hook": hook_in, "target_hook": hook_out, "held_out": "unknown"}
    return EvalTarget(
        name=name,
        folder=_where(folder),
        sae=sae,
        meta=meta,
        stream="file",
        source=src,
        source_hooks=(hook_in, hook_out),
        data=None,
        provenance=prov,
    )


def _synthetic_target(name: str, folder: Path, sae, meta: dict) -> EvalTarget:
    from sae.analysis.synthetic import SyntheticConfig, SyntheticData

    try:
        gen = SyntheticConfig(**meta["synthetic"])
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"the 'synthetic' metadata of {str(folder)!r} is invalid ({e})."
        ) from None
    _check_width("its synthetic data", gen.d_in, folder, "d_in", sae.cfg.d_in)
    prov = {
        "kind": "synthetic",
        "generator": dataclasses.asdict(gen),
        "first_batch_index": SYNTHETIC_HELDOUT_START,
        "held_out": True,
    }
    return EvalTarget(
        name=name,
        folder=_where(folder),
        sae=sae,
        meta=meta,
        stream="synthetic",
        source=SyntheticData(gen),
        source_hooks=("synthetic", None),
        data=None,
        provenance=prov,
    )


def _live_target(
    name: str, folder: Path, sae, meta: dict, cfg: EvalConfig, ctx: EvalContext
) -> EvalTarget:
    from sae.activations.capture import load_model, recorded_model_config

    model_name, hook, target = (
        meta.get("model_name"),
        meta.get("hook_name"),
        meta.get("target_hook_name"),
    )
    if not model_name or not hook:
        raise ConfigError(
            f"{str(folder)!r} records no model_name/hook_name in its cfg.json metadata, so its "
            "activations cannot be regenerated; give --activations PATH."
        )
    if hook == MATRIX_HOOK:
        raise ConfigError(
            f"{str(folder)!r} was trained on a plain activation matrix (hook {hook!r}), which no "
            "model can regenerate; give --activations PATH (held-out rows of the same width)."
        )
    data, origin, train_data = _data_config(folder, meta, cfg)
    hooks = [hook] + ([target] if target else [])
    mcfg = recorded_model_config(
        meta,
        hooks,
        str(folder),
        device=cfg.device,
        batch_windows=cfg.batch_windows,
        name=cfg.model_name,
        revision=cfg.revision,
        dtype=cfg.model_dtype,
        trust_remote_code=cfg.trust_remote_code,
    )
    model_name = mcfg.name
    settings = {
        k: getattr(mcfg, k) for k in ("revision", "dtype", "trust_remote_code", "gguf_file")
    }
    key = (model_name, *settings.values())
    if key not in ctx.models:
        ctx.models[key] = load_model(mcfg)
    model, tokenizer = ctx.models[key]
    store = StoreConfig(
        exclude_bos=bool(meta.get("exclude_bos", True)),
        exclude_special=bool(meta.get("exclude_special", True)),
    )
    src = LiveSource(mcfg, data, store, model=model, tokenizer=tokenizer)
    _check_width(f"model {model_name!r} at {hook!r}", src.d[hook], folder, "d_in", sae.cfg.d_in)
    if target:
        _check_width(
            f"model {model_name!r} at {target!r}", src.d[target], folder, "d_out", sae.cfg.width_out
        )
    prov = {
        "kind": "live",
        "model": model_name,
        "model_load": settings,
        "hook": hook,
        "target_hook": target,
        "splice_hook": target or hook,
        "data": dataclasses.asdict(data),
        "data_origin": origin,
        "train_data": train_data,
        "held_out": "pending",  # decided from the windows actually read (finish_provenance)
        "exclude_bos": store.exclude_bos,
        "exclude_special": store.exclude_special,
    }
    return EvalTarget(
        name=name,
        folder=_where(folder),
        sae=sae,
        meta=meta,
        stream="live",
        source=src,
        source_hooks=(hook, target),
        data=data,
        provenance=prov,
    )


def _where(folder: Path) -> Path:
    """The SAE's folder as reports record it: absolute; a Hub repo id stays as given."""
    return folder.resolve() if folder.exists() else folder


def _load(d: str) -> SAE:
    folder = Path(d)
    try:
        return load_sae(folder if folder.exists() else d)  # a folder, or a Hub repo id
    except Exception as e:  # missing files, bad JSON, corrupt safetensors, shape mismatch
        raise ConfigError(f"cannot load SAE folder {d!r}: {first_line(e)}") from None


def prepare(cfg: EvalConfig, ctx: EvalContext, loaded: list[SAE] | None = None) -> list[EvalTarget]:
    """Every SAE loaded (or taken from `loaded`, one per cfg.sae_dirs) and matched to its
    activations, every suite's check passed."""
    if loaded is not None and len(loaded) != len(cfg.sae_dirs):
        raise ValueError(f"{len(loaded)} SAEs loaded for {len(cfg.sae_dirs)} SAE folders")
    targets: list[EvalTarget] = []
    used: set[str] = set()
    for i, d in enumerate(cfg.sae_dirs):
        folder = Path(d)
        sae = loaded[i] if loaded is not None else _load(d)
        meta = dict(sae.metadata)
        name, n = folder.resolve().name, 2
        while name in used:
            name, n = f"{folder.resolve().name}-{n}", n + 1
        used.add(name)
        if cfg.activations is not None:
            target = _file_target(name, folder, sae, meta, cfg)
        elif "synthetic" in meta:
            target = _synthetic_target(name, folder, sae, meta)
        else:
            target = _live_target(name, folder, sae, meta, cfg, ctx)
        for suite in cfg.suites:
            suite_module(suite).check(target)
        targets.append(target)
    return targets


def run_eval(cfg: EvalConfig, loaded: list[SAE] | None = None) -> Path:
    """Run `cfg.suites` on every SAE and write report.json, report.md and PNGs; return the folder.
    `loaded`: the SAEs of cfg.sae_dirs, in order, where the caller has loaded them already."""
    out = Path(cfg.out)
    ctx = EvalContext(
        eval_tokens=cfg.eval_tokens,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        device=cfg.device,
        batch_windows=cfg.batch_windows,
        out=out,
        llm=cfg.llm,
        interaction=cfg.interaction,
    )
    require_ours(out, "report")  # before any model loads: a folder not ours is one line
    t_start = time.perf_counter()
    targets = prepare(cfg, ctx, loaded)
    ctx.timings["prepare (load models, check inputs)"] = time.perf_counter() - t_start
    claim(out, "report")
    results: list[tuple[EvalTarget, dict[str, SuiteResult]]] = []
    for target in targets:
        per_suite: dict[str, SuiteResult] = {}
        for suite in cfg.suites:
            t0 = time.perf_counter()
            per_suite[suite] = suite_module(suite).run(target, ctx)
            dt = time.perf_counter() - t0
            print(f"[sae eval] {suite} on {target.name}: {dt:.1f} s", file=sys.stderr)
        results.append((target, per_suite))
    ctx.timings["total"] = time.perf_counter() - t_start
    from sae.eval.report import write_report  # matplotlib loads only when a report is drawn

    write_report(cfg, ctx, results)
    return out


def cli_main(argv: list[str]) -> str:
    """`sae eval SAE_DIR [SAE_DIR ...] --suite core,synthetic [--activations PATH] [--data.* ...]
    [--eval-tokens N] [--n-boot N] --out REPORT_DIR`; returns the report folder."""
    return str(run_eval(parse_args(argv)))
