"""YAML files and command-line flags <-> the config dataclasses of `sae.config`.

    cfg = parse(TrainConfig, ["configs/minilm_topk.yaml", "--sae.k", "64"], "sae train")

A YAML file and the flags take one road: a nested dict of plain values (from `yaml_load`, or
from tyro) that `checked` turns into the dataclasses (unknown keys and wrong types refused, then
each `__post_init__`), every error in one line. tyro keeps its own dataclass handling and help;
two rules in its constructor registry (`_registry`) make it return dicts and take a flag's words
unchecked, so tyro itself never rejects a value. `HIDDEN` fields are set in the YAML file only,
and `--help` names them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any

import tyro
import yaml
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec

from sae.config import ConfigError
from sae.config.schema import TrainConfig
from sae.config.trust import trust_from_command_line
from sae.config.values import type_problem, yaml_load
from sae.fsutil import atomic_write_text

HIDDEN: dict[type, frozenset[str]] = {
    TrainConfig: frozenset(
        """synthetic sae.d_in sae.d_out data.part data.bos model.revision store.exclude_bos
        store.exclude_special store.skip_nonfinite sae.apply_b_dec_to_input sae.jumprelu_bandwidth
        sae.jumprelu_init_threshold sae.target_l0 sae.aux_k sae.aux_coefficient seed dead_tokens
        log_every wandb_project model.gguf_file""".split()
    )
}
"""Per command config: the dotted fields (or whole sections) set in the YAML file only, so that
`sae train --help` shows the fields runs set; its first lines name these. They are the synthetic
generator's section (configs/synthetic.yaml), widths taken from the data (d_in, d_out), the
part of the data read (training reads the training part, `sae eval` the held-out one), and
settings a run rarely changes."""


def hidden_owner(cls: type, dotted: str) -> str | None:
    """The HIDDEN entry that covers dotted field `dotted` of command config `cls`, if any."""
    hidden = HIDDEN.get(cls, ())
    return next((h for h in hidden if dotted == h or dotted.startswith(h + ".")), None)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def leaf_fields(cls: type, path: str = "") -> list[str]:
    """Every dotted leaf field of config dataclass `cls` ('sae.k', 'out', ...)."""
    hints, names = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        sub = _dataclass_in(hints[f.name])
        names += leaf_fields(sub, f"{path}{f.name}.") if sub else [path + f.name]
    return names


def from_dict(cls: type, data: dict[str, Any], where: str = "config", path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, refusing unknown keys with the valid ones listed
    and values of the wrong type."""
    if not isinstance(data, dict):
        what = f"section {path.rstrip('.')!r} of {where}" if path else where
        raise ConfigError(f"{what} must be a mapping of field names to values, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
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
            value = from_dict(sub, value, where, f"{path}{name}.")
        elif (problem := type_problem(value, hints[name])) is not None:
            raise ConfigError(f"{path}{name}={value!r} in {where} {problem}.")
        kwargs[name] = value
    return cls(**kwargs)


def checked(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """`cls` built and validated from a plain dict; any validation error as a ConfigError."""
    try:
        return from_dict(cls, data, where)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # nested configs (SAEConfig, ...) raise ValueError
        raise ConfigError(str(e)) from None


# -- the command line through tyro ------------------------------------------------------------


def _word(word: str, hint: Any) -> Any:
    """A command-line word as the value it stands for: the word itself where that fits the field
    (any string field, a listed choice), None for 'None' where None fits, else what YAML reads,
    as a float for a float field (`--lr 1` is 1.0)."""
    if word == "None" and type_problem(None, hint) is None:
        return None
    if type_problem(word, hint) is None:
        return word
    try:
        value = yaml_load(word)
    except yaml.YAMLError:
        return word  # the type check names it
    if type(value) is int and type_problem(float(value), hint) is None:
        return float(value)
    return value


_IN_RULE = contextvars.ContextVar("_IN_RULE", default=False)


def _tyros_own(get: Any, info: Any) -> Any:
    """tyro's own spec for a type (`get` is a ConstructorRegistry getter); our rules step aside
    while tyro finds it."""
    token = _IN_RULE.set(True)
    try:
        return get(info)
    finally:
        _IN_RULE.reset(token)


def _words(info: tyro.constructors.PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """tyro's spec for a field (its metavar and default shown in --help), except that any field
    but a bool (a --flag/--no-flag pair) takes its words unchecked: one word is one value, a
    list field one value per word, anything else arrives as a list and fails the type check,
    which names the field."""
    hint = info.type
    if _IN_RULE.get() or hint is bool or _dataclass_in(hint):
        return None
    spec = _tyros_own(ConstructorRegistry.get_primitive_spec, info)
    if not isinstance(spec, PrimitiveConstructorSpec):
        return None
    is_list = typing.get_origin(hint) in (list, tuple)
    item = typing.get_args(hint)[0] if is_list else hint

    def from_words(words: list[str]) -> Any:
        values = [_word(w, item) for w in words]
        return values if is_list or len(values) != 1 else values[0]

    return dataclasses.replace(spec, nargs="*", choices=None, instance_from_str=from_words)


@functools.cache
def _registry(cls: type) -> ConstructorRegistry:
    """tyro's rules for command `cls`: tyro's own dataclass handling (field docstrings become the
    help), except that each section comes back as a dict and HIDDEN fields get no flag."""
    hide: dict[type, set[str]] = {}
    for dotted in HIDDEN.get(cls, ()):
        *sections, name = dotted.split(".")
        owner = functools.reduce(
            lambda t, s: _dataclass_in(typing.get_type_hints(t)[s]), sections, cls
        )
        hide.setdefault(owner, set()).add(name)
    registry = ConstructorRegistry()
    registry.primitive_rule(_words)

    @registry.struct_rule
    def sections_as_dicts(info: tyro.constructors.StructTypeInfo):
        if _IN_RULE.get() or not dataclasses.is_dataclass(info.type):
            return None
        spec = _tyros_own(ConstructorRegistry.get_struct_spec, info)
        fields = tuple(
            dataclasses.replace(f, type=tyro.conf.Suppress[f.type])
            if f.name in hide.get(info.type, ())
            else f
            for f in spec.fields
        )
        return dataclasses.replace(spec, fields=fields, instantiate=lambda **values: values)

    return registry


def _description(cls: type) -> str:
    """The help's first lines: the command's docstring and the fields without a flag."""
    leaves = leaf_fields(cls)
    hidden = sorted(h if h in leaves else f"{h}.*" for h in HIDDEN.get(cls, ()))
    doc = (cls.__doc__ or "").strip()
    return f"{doc}\n\nSet in the YAML config file only: {', '.join(hidden)}." if hidden else doc


def _unknown(cls: type, word: str, prog: str) -> ConfigError:
    """The one-line error for a word tyro did not take."""
    if not word.startswith("--"):
        return ConfigError(
            f"unexpected word {word!r} on the command line: a true/false option takes no value "
            "(--quiet or --no-quiet), and only the first word may be a config file."
        )
    flag = word.split("=", 1)[0]
    if owner := hidden_owner(cls, flag[2:].replace("-", "_")):
        return ConfigError(
            f"{owner} is set in the YAML config file only (e.g. configs/*.yaml), not as the "
            f"flag {flag}."
        )
    flags = ["--" + f.replace("_", "-") for f in leaf_fields(cls) if not hidden_owner(cls, f)]
    near = difflib.get_close_matches(flag, flags, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return ConfigError(f"unknown option {flag}{hint}; `{prog} --help` lists the options.")


def read_flags(
    cls: type, default: Any, args: list[str], prog: str, strict: bool = True
) -> dict[str, Any]:
    """`default` (an instance of `cls`, or None for the class defaults) with the command-line flags
    applied, as a nested dict of unchecked values. `--help` prints the help and exits; a word
    tyro did not take is an error. `strict=False` ignores both (a first look at the flags)."""
    values, unknown = tyro.cli(
        cls,
        args=args,
        prog=prog,
        description=_description(cls),
        registry=_registry(cls),
        return_unknown_args=True,
        add_help=strict,
        **({} if default is None else {"default": default}),
    )
    if unknown and strict:
        raise _unknown(cls, unknown[0], prog)
    return values


def parse_cli(
    cls: type, default: Any, args: list[str], prog: str, source: str = "the defaults"
) -> Any:
    """`default` (read from `source`, a file's name) overridden by command-line flags, validated
    (one-line errors). A model's own code is trusted only as `sae.config.trust` says."""
    values = trust_from_command_line(default, lambda d: read_flags(cls, d, args, prog), source)
    return checked(cls, values, "the command line")


# -- YAML files ----------------------------------------------------------------------------------


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


def parse(cls: type, argv: list[str], prog: str) -> Any:
    """Config from an optional leading YAML path (else the class defaults) plus flag overrides."""
    if argv and not argv[0].startswith("-"):
        return parse_cli(cls, load_yaml(cls, argv[0]), argv[1:], prog, repr(argv[0]))
    return parse_cli(cls, cls(), argv, prog)
