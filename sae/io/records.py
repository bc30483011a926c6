"""The typed records the stages hand each other: what `sae train` leaves beside each SAE
(train_summary.json), what a records pass leaves beside its tensors (records.json), and what
`sae eval` writes (report.json). The writer and every reader use the one dataclass here, so a key
renamed on one side is a type error on the other instead of a figure silently missing.

    from sae.io.records import TrainSummary, RecordsInfo, Report
    s = TrainSummary.read(folder)            # final/<sae>/train_summary.json
    s.dead_pct, s.dense_pct_1                # held-out dead and dense latents, percent
    info = RecordsInfo.read(report / name / "records")
    rep = Report.read(report)                # report.json; rep.saes[0].results["core"]

`to_json` gives the JSON object (keys as the files have always had them); `from_json` checks
every field's type and raises RecordError (one line naming the field) on a wrong one. Fields
added after a file format first shipped default to None, so older files still load; unknown keys
are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Self, get_type_hints

from sae.config.errors import ConfigError
from sae.fsutil import atomic_write_json


class RecordError(ConfigError):
    """A record file that is missing, not JSON, or holds a field of the wrong type."""


def clean_json(obj: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples become lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    return obj


def _typed(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (and nested records built); RecordError if not."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _typed(value, arm, where)
            except RecordError:
                continue
        want = " or ".join("null" if a is type(None) else _name(a) for a in args)
        raise RecordError(f"{where} is {_shown(value)}; expected {want}.")
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str or tp is bool:
        if isinstance(value, tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return tp.from_json(value, where)
    else:
        raise TypeError(f"no JSON check for annotation {tp!r}")  # a field added without one
    raise RecordError(f"{where} is {_shown(value)}; expected {_name(tp)}.")


def _name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Record:
    """to_json/from_json/read/write shared by every record below (each a dataclass)."""

    FILE: ClassVar[str] = ""
    """file name inside the folder the record describes."""

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return clean_json({f.name: _json(getattr(self, f.name)) for f in fields})

    @classmethod
    def from_json(cls, raw: Any, where: str | None = None) -> Self:
        where = where or cls.FILE
        if not isinstance(raw, dict):
            raise RecordError(f"{where} is {_shown(raw)}; expected an object.")
        hints = get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in raw:
                values[f.name] = _typed(raw[f.name], hints[f.name], f"{where}: {f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where} has no {f.name!r}.")
        return cls(**values)

    @classmethod
    def read(cls, folder: str | Path) -> Self:
        """The record in `folder`; RecordError (one line) when missing, not JSON, or mistyped."""
        path = Path(folder) / cls.FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise RecordError(f"cannot read {str(path)!r}: {e.strerror or e}.") from None
        except ValueError as e:
            raise RecordError(f"{str(path)!r} is not JSON ({e}).") from None
        return cls.from_json(raw, str(path))

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILE
        atomic_write_json(path, self.to_json())
        return path


def _json(v: Any) -> Any:
    if isinstance(v, _Record):
        return v.to_json()
    if isinstance(v, list):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _json(x) for k, x in v.items()}
    return v


@dataclasses.dataclass(frozen=True)
class TrainSummary(_Record):
    """Held-out scores `sae train` writes beside each final SAE (sae/training/heldout.py);
    definitions in docs/methods.md."""

    FILE: ClassVar[str] = "train_summary.json"

    fvu: float | None
    """fraction of variance unexplained on the held-out tokens (null: not finite)."""
    l0: float | None
    """mean active latents per token."""
    dead_pct: float | None = None
    """percent of latents that never fired on the held-out tokens."""
    dense_pct_1: float | None = None
    """percent of latents firing on more than 1% of the held-out tokens."""
    dense_pct_10: float | None = None
    """percent of latents firing on more than 10% of them."""
    eval_tokens: int | None = None
    """held-out tokens scored."""
    train_dead_pct: float | None = None
    """percent of latents dead by the training counter (no firing in dead_tokens tokens)."""
    eval_source: str | None = None
    """where the held-out tokens came from (or 'training stream (not held out)')."""


@dataclasses.dataclass(frozen=True)
class RecordsContext(_Record):
    before: int
    """context tokens kept before the activating token."""
    after: int
    """context tokens kept after it."""
    pad_token: int
    """token id filling a context cut by a window's edge."""


@dataclasses.dataclass(frozen=True)
class RecordsInfo(_Record):
    """What a records pass writes beside records.safetensors (sae/eval/records.py); read back by
    the exports (sae/export/view.py) and by `sae export` to decide whether to remake them."""

    FILE: ClassVar[str] = "records.json"

    records_version: int
    sae: str
    """the SAE's report name."""
    sae_folder: str
    d_sae: int
    tokens: int
    """tokens the pass read."""
    settings: dict[str, int]
    """RecordSettings as a dict."""
    context: RecordsContext
    activations: dict[str, Any]
    """provenance of the rows read (report.json's `activations`, held out decided)."""
    logit_effects: dict[str, Any]
    correlated_latents: bool | str
    """true, or why the latent-latent correlations were skipped."""
    identity: dict[str, Any]
    """what the pass's identity hash covers (settings, tokens, seed, SAE hash, activations)."""
    token_strings: dict[str, str]
    """token id (as a string) -> its text, for every token id in the tensors."""
    identity_sha256: str | None = None
    """hash of `identity`: the records are reused when a new pass would hash the same."""


@dataclasses.dataclass(frozen=True)
class ReportEntry(_Record):
    """One evaluated SAE in report.json (schema in sae/eval/__init__.py)."""

    name: str
    """report subfolder."""
    folder: str
    """absolute SAE folder, or the Hub repo id as given."""
    sae: dict[str, Any]
    model: str | None
    hook: str | None
    target_hook: str | None
    tokens_trained: Any
    """cfg.json metadata's tokens_trained as recorded (any library's folder)."""
    activations: dict[str, Any]
    """where the scored rows came from (provenance)."""
    results: dict[str, dict[str, Any]]
    """suite -> its results."""
    figures: dict[str, dict[str, str]]
    """suite -> figure name -> PNG path relative to the report folder."""


@dataclasses.dataclass(frozen=True)
class Report(_Record):
    """report.json of `sae eval` (sae/eval/report.py writes it; schema in sae/eval/__init__.py)."""

    FILE: ClassVar[str] = "report.json"

    schema_version: int
    sae_version: str
    created_utc: str
    config: dict[str, Any]
    """EvalConfig as a dict."""
    suites: list[str]
    timings_s: dict[str, float]
    saes: list[ReportEntry]
    frontier: dict[str, Any] | None = None

    def entry(self, folder: str | Path) -> ReportEntry | None:
        """The entry of the SAE at `folder` (a path, or a Hub repo id as given), if evaluated."""
        for e in self.saes:
            if Path(e.folder) == Path(folder):
                return e
        return None
