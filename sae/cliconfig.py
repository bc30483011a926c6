"""YAML files and command-line flags <-> the config dataclasses of `sae.config`.

    cfg = parse(TrainConfig, ["configs/minilm_topk.yaml", "--sae.k", "64"], "sae train")

tyro turns the dataclasses into flags; `--help` lists the fields everyone sets, each with its
unit. Fields in `HIDDEN` are set in a YAML file only (a flag for one is refused in one line);
fields in `REMOVED` are gone: the value they held is now a named constant, and a YAML key or flag
that names one stops the run with a line saying so. Validation runs after parsing (`unchecked`),
so every error is one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from sae import config as C
from sae.config import ConfigError, TrainConfig
from sae.configtypes import type_problem, yaml_load
from sae.fsutil import atomic_write_text

HIDDEN: dict[type, frozenset[str]] = {
    TrainConfig: frozenset(
        {
            "synthetic",  # the generator's settings: configs/synthetic.yaml shows them
            "data.part",  # training reads the training part; `sae eval` reads the held-out one
            "data.bos",
            "model.revision",  # pinning a model revision belongs in the run's YAML
            "store.exclude_bos",
            "store.exclude_special",
            "sae.d_in",  # taken from the activations
            "sae.d_out",  # taken from target_hook
            "sae.apply_b_dec_to_input",
            "sae.jumprelu_bandwidth",
            "sae.jumprelu_init_threshold",
            "sae.target_l0",
            "sae.aux_k",
            "sae.aux_coefficient",
            "seed",
            "dead_tokens",
            "log_every",
            "wandb_project",
        }
    )
}
"""Per command config: dotted fields settable in YAML only (kept out of `--help`)."""

REMOVED: dict[type, dict[str, tuple[str, Any]]] = {
    TrainConfig: {
        "lr_warmup": ("LR_WARMUP", C.LR_WARMUP),
        "lr_decay": ("LR_DECAY", C.LR_DECAY),
        "sparsity_warmup": ("SPARSITY_WARMUP", C.SPARSITY_WARMUP),
        "adam_beta1": ("ADAM_BETAS[0]", C.ADAM_BETAS[0]),
        "adam_beta2": ("ADAM_BETAS[1]", C.ADAM_BETAS[1]),
        "grad_clip": ("GRAD_CLIP", C.GRAD_CLIP),
        "b_dec_init": ("B_DEC_INIT", C.B_DEC_INIT),
        "max_nonfinite_steps": ("MAX_NONFINITE_STEPS", C.MAX_NONFINITE_STEPS),
        "keep_checkpoints": ("KEEP_CHECKPOINTS", C.KEEP_CHECKPOINTS),
    }
}
"""Per command config: removed dotted field -> (constant in sae/config.py, its value). A YAML
file that sets one to that very value still loads (config.yaml of older runs)."""
EARLIER: dict[str, tuple[Any, ...]] = {"adam_beta1": (0.9,), "adam_beta2": (0.999,)}
"""Removed fields' earlier fixed values, which older runs' config.yaml hold: they still load,
with a note that the constant changed."""


def _removed(root: type, dotted: str, value: Any = ...) -> bool:
    """True if `dotted` is a removed field set to its fixed value; an error if set otherwise."""
    if dotted not in REMOVED.get(root, {}):
        return False
    const, fixed = REMOVED[root][dotted]
    if value == fixed:
        return True
    if value in EARLIER.get(dotted, ()):
        print(
            f"note: {dotted}={value!r} (an older run's value) is ignored; it is now fixed at "
            f"{fixed!r} ({const} in sae/config.py).",
            file=sys.stderr,
        )
        return True
    raise ConfigError(
        f"{dotted} can no longer be set: it is now fixed at {fixed!r} ({const} in sae/config.py)."
    )


def from_dict(cls: type, data: dict[str, Any], where: str = "config", root=None, path="") -> Any:
    """Build dataclass `cls` from a nested dict, refusing unknown keys with the valid ones listed
    and removed keys with what became of them."""
    root = root or cls
    if not isinstance(data, dict):
        what = f"section {path.rstrip('.')!r} of {where}" if path else where
        raise ConfigError(f"{what} must be a mapping of field names to values, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if _removed(root, path + name, value):
            continue
        if name not in fields:
            raise ConfigError(
                f"unknown field {path + str(key)!r} in {where}; valid fields are {list(fields)}."
            )
        sub = _dataclass_in(hints[name])
        if sub and value is not None:
            # A partial section keeps the parent's defaults for the rest (TrainConfig's store
            # normalises; a bare StoreConfig() would not).
            base = fields[name].default_factory
            if base is not dataclasses.MISSING and isinstance(value, dict):
                value = dataclasses.asdict(base()) | value
            value = from_dict(sub, value, where, root, f"{path}{name}.")
        elif (problem := type_problem(value, hints[name])) is not None:
            raise ConfigError(f"{path}{name}={value!r} in {where} {problem}.")
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


@functools.cache
def unchecked(cls: type, hidden: frozenset[str] = frozenset(), path: str = "") -> type:
    """A subclass of config dataclass `cls` (and of its nested configs) that skips validation
    and suppresses the `hidden` dotted fields.

    tyro builds the config while it parses flags and would print a validation error as a
    multi-line box; parsing into this copy and validating afterwards (`parse_cli`) keeps every
    error to one line. Literal fields become plain strings here, so an unknown choice also
    reaches our own one-sentence check.
    """
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        hint, dotted = hints[f.name], path + f.name
        default = (
            {"default": f.default}
            if f.default is not dataclasses.MISSING
            else {"default_factory": f.default_factory}
        )
        if dotted in hidden:
            fields.append((f.name, tyro.conf.Suppress[hint], dataclasses.field(**default)))
        elif dataclasses.is_dataclass(hint):
            sub = unchecked(hint, hidden, dotted + ".")
            make = lambda f=f, sub=sub: from_dict(sub, dataclasses.asdict(f.default_factory()))  # noqa: E731
            fields.append((f.name, sub, dataclasses.field(default_factory=make)))
        elif typing.get_origin(hint) is Literal:
            fields.append((f.name, str, dataclasses.field(**default)))
        elif _bool_or_choice(hint):
            fields.append((f.name, Annotated[Any, _BOOL_OR_CHOICE], dataclasses.field(**default)))
    namespace = {
        "__post_init__": lambda self: None,
        "__doc__": cls.__doc__,
        "__module__": cls.__module__,
    }
    return dataclasses.make_dataclass(
        cls.__name__,
        fields,
        bases=(cls,),
        namespace=namespace,
        kw_only=True,
        frozen=cls.__dataclass_params__.frozen,
    )


def _bool_or_choice(hint: Any) -> bool:
    """True for a field that is true, false or a named choice (`autocast: bool | Literal['auto']`)."""
    args = typing.get_args(hint)
    unions = (typing.Union, types.UnionType)
    return (
        typing.get_origin(hint) in unions
        and bool in args
        and len(args) == 2
        and any(typing.get_origin(a) is Literal for a in args)
    )


_BOOL_OR_CHOICE = tyro.constructors.PrimitiveConstructorSpec(
    nargs="*",
    metavar="{auto,true,false}",
    instance_from_str=lambda words: yaml_load(" ".join(words)) if words else True,
    is_instance=lambda value: isinstance(value, bool | str),
    str_from_instance=lambda value: [str(value).lower()],
)
"""A `bool | Literal[...]` flag: `--autocast` alone is true (as before it took a value), and a
value is read as YAML reads it (`true`, `false`, `auto`), so a flag means what the same word in
a config file means. Anything else reaches the config's own one-sentence check."""


def _negated_choices(cls: type, args: list[str], path: str = "") -> list[str]:
    """`--no-autocast` as `--autocast false`: the bool flag pair a `bool | Literal[...]` field had
    before it took a choice."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            args = _negated_choices(hints[f.name], args, f"{path}{f.name}.")
        elif _bool_or_choice(hints[f.name]):
            negated = {f"--{path}no-{f.name}", f"--{path}no-{f.name.replace('_', '-')}"}
            args = [
                w
                for word in args
                for w in ([word] if word not in negated else [f"--{path}{f.name}", "false"])
            ]
    return args


def _check_flags(cls: type, args: list[str]) -> None:
    """One-line errors for flags naming a removed field or a YAML-only one."""
    hidden = HIDDEN.get(cls, frozenset())
    for word in args:
        if not word.startswith("--"):
            continue
        dotted = word[2:].split("=", 1)[0].replace("-", "_")
        _removed(cls, dotted)
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            if ".".join(parts[:i]) in hidden:
                raise ConfigError(
                    f"{'.'.join(parts[:i])} is set in the YAML config file only "
                    f"(e.g. configs/*.yaml), not as the flag {word.split('=', 1)[0]}."
                )


def hidden_fields(cls: type) -> frozenset[str]:
    return HIDDEN.get(cls, frozenset())


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_cli(cls: type, default: Any, args: list[str], prog: str) -> Any:
    """`default` overridden by command-line flags, validated after parsing (one-line errors)."""
    _check_flags(cls, args)
    args = _negated_choices(cls, args)
    loose = unchecked(cls, hidden_fields(cls))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parsed = tyro.cli(
                loose, default=from_dict(loose, to_dict(default)), args=args, prog=prog
            )
    except SystemExit as e:
        if e.code in (0, None):  # --help
            print(out.getvalue(), end="")
            raise
        raise ConfigError(_one_line(out.getvalue(), prog)) from None
    return checked(cls, to_dict(parsed))


_RULE = re.compile(r"^[\s│╭╮╰╯─-]*$")


def _one_line(box: str, prog: str) -> str:
    """tyro's multi-line error box as one sentence: the error, the flag's usage, a suggestion."""
    sections: list[list[str]] = [[]]
    for line in box.splitlines():
        text = line.strip(" │╭╮╰╯")
        if _RULE.match(line) or set(text) <= set("─- "):
            sections.append([])
        elif text:
            sections[-1].append(" ".join(text.split()))
    sections = [s for s in sections if s]
    body = " ".join(sections[1] if len(sections) > 1 else sections[0] if sections else [])
    if "Got errors: - " in body:
        body = body.replace("Got errors: - ", "(").replace(" - ", "; ") + ")"
    for sec in sections[2:]:
        if sec[0].startswith("Argument helptext"):
            body += f"; usage: {sec[1]}" if len(sec) > 1 else ""
        if sec[0].startswith("Perhaps you meant"):
            body += f"; perhaps you meant {sec[1].split()[0]}" if len(sec) > 1 else ""
    return f"{body.rstrip('.')} (`{prog} --help` lists every option)."


def checked(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """`cls` built and validated from a plain dict; any validation error as a ConfigError."""
    try:
        return from_dict(cls, data, where)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # nested configs (SAEConfig, ...) raise ValueError
        raise ConfigError(str(e)) from None


def load_yaml(cls: type, path: str | Path) -> Any:
    """Read a YAML config file into dataclass `cls`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        with path.open() as f:
            data = yaml_load(f)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({first}).") from None
    return checked(cls, data if data is not None else {}, where=str(path))


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the config beside an output, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def parse(cls: type, argv: list[str], prog: str, default=None):
    """Config from an optional leading YAML path plus tyro overrides."""
    path = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if path else argv
    default = load_yaml(cls, path) if path else (default if default is not None else cls())
    return parse_cli(cls, default, rest, prog)


def saved_run_config(argv: list[str]) -> Path | None:
    """The config.yaml of the run a `--resume --out DIR` command line continues, if DIR has one:
    it is the base the command line's flags override (only RESUME_FREE fields may differ)."""
    if "--resume" not in argv:
        return None
    for i, word in enumerate(argv):
        if word == "--out" and i + 1 < len(argv):
            saved = Path(argv[i + 1]) / "config.yaml"
        elif word.startswith("--out="):
            saved = Path(word.split("=", 1)[1]) / "config.yaml"
        else:
            continue
        return saved if saved.is_file() else None
    return None
