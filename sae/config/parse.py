"""YAML files and command-line flags -> the config dataclasses, through tyro.

    cfg = parse(TrainConfig, ["configs/minilm_topk.yaml", "--sae.k", "64"], "sae train")

The YAML file gives the defaults and `tyro.cli` reads the flags over them. A YAML value is read by
tyro's own constructor for its field's type, the one that reads the field's flag, so `lr: 1e-3`
is a float (YAML 1.1, which PyYAML reads, would make it a string) and `sae.k: abc` is refused as
`--sae.k abc` is. Fields annotated `tyro.conf.Suppress` have no flag: they are set in the YAML
file only, and `--help` names them on its first lines. `cli` is the one place where tyro's error
(a box on stderr, exit 2) becomes one ConfigError line naming the field, the value and what is
valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import os
import re
import typing
from pathlib import Path
from typing import Any

import tyro
import yaml
from tyro.constructors import ConstructorRegistry, PrimitiveTypeInfo

from sae.config.errors import ConfigError
from sae.config.trust import trust_from_command_line
from sae.fsutil import atomic_write_text

_SUPPRESS = typing.get_args(tyro.conf.Suppress[int])[1]
"""tyro's marker for a field without a flag: our marker for a field set in the YAML file only."""


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _hints(cls: type) -> dict[str, Any]:
    """Each field's type (markers kept), in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section(hint: Any) -> type | None:
    """The config dataclass a field holds (a section such as `sae`), else None."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint if dataclasses.is_dataclass(hint) else None


def _yaml_only(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Annotated and _SUPPRESS in hint.__metadata__


def leaf_fields(cls: type, path: str = "") -> list[str]:
    """Every dotted leaf field of config dataclass `cls` ('sae.k', 'out', ...)."""
    names = []
    for name, hint in _hints(cls).items():
        sub = _section(hint)
        names += leaf_fields(sub, f"{path}{name}.") if sub else [path + name]
    return names


def yaml_only(cls: type, path: str = "") -> list[str]:
    """The dotted fields (or whole sections) of `cls` marked `tyro.conf.Suppress`: set in the
    YAML file only, no flag."""
    names = []
    for name, hint in _hints(cls).items():
        if _yaml_only(hint):
            names.append(path + name)
        elif sub := _section(hint):
            names += yaml_only(sub, f"{path}{name}.")
    return names


def _owner(cls: type, dotted: str) -> str | None:
    """The YAML-only field or section that covers dotted field `dotted`, if any."""
    return next((h for h in yaml_only(cls) if dotted == h or dotted.startswith(h + ".")), None)


def _hint_of(cls: type, dotted: str) -> Any:
    hint: Any = cls
    for name in dotted.split("."):
        hint = _hints(_section(hint))[name]
    return hint


# -- a value read as its flag reads it ---------------------------------------------------------


def _describe(metavar: str) -> str:
    """tyro's metavar ('INT', '{None}|FLOAT', '{topk,relu}') in words."""
    words = {"INT": "an integer", "FLOAT": "a number", "STR": "a string"}
    if m := re.fullmatch(r"\[(\w+) \[\w+ \.\.\.\]\]", metavar):
        return f"a list of {words.get(m.group(1), m.group(1)).split(' ', 1)[1]}s"
    arms = []
    for arm in metavar.split("|"):
        if arm.startswith("{"):
            arms += arm.strip("{}").split(",")
        else:
            arms.append(words.get(arm, arm))
    return arms[0] if len(arms) == 1 else ", ".join(arms[:-1]) + " or " + arms[-1]


def _spec(hint: Any):
    return ConstructorRegistry.get_primitive_spec(PrimitiveTypeInfo.make(hint, set()))


def valid(hint: Any) -> str:
    """What a field of type `hint` takes, in words ('an integer', 'None or a number', ...)."""
    return _describe(str(_spec(hint).metavar))


def typed(hint: Any, words: list[str], name: str, where: str) -> Any:
    """`words` as tyro reads them for a field of type `hint` (the flag's words); a ConfigError
    naming `name`, the value and what is valid if they do not fit."""
    spec = _spec(hint)
    arity = spec.nargs if isinstance(spec.nargs, int) else None
    value: Any = words[0] if arity == 1 and len(words) == 1 else words
    try:
        if arity is not None and len(words) != arity:
            raise ValueError
        if spec.choices is not None and any(w not in spec.choices for w in words):
            raise ValueError
        return spec.instance_from_str(words)
    except ValueError:
        raise ConfigError(f"{name}={value!r}{where} must be {valid(hint)}.") from None


def _words(hint: Any, value: Any) -> list[str] | None:
    """A YAML value as the words of its flag (None for a mapping, which no leaf field takes)."""
    spec = _spec(hint)
    if isinstance(value, dict):
        return None
    if spec.is_instance(value):
        return list(spec.str_from_instance(value))
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def from_yaml(cls: type, data: Any, where: str, base: Any = None, path: str = "") -> Any:
    """`base` (default: `cls()`) with the values of YAML mapping `data`; a partial section keeps
    the base's other values. Unknown keys are refused with the valid ones listed."""
    what = f"section {path.rstrip('.')!r} of {where}" if path else where
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of field names to values, got {data!r}.")
    base = cls() if base is None else base
    hints, changes = _hints(cls), {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            raise ConfigError(
                f"unknown field {path + str(key)!r} in {where}; valid fields are {list(hints)}."
            )
        if sub := _section(hints[name]):
            section = getattr(base, name) if value is not None else None
            changes[name] = from_yaml(sub, value, where, section, f"{path}{name}.")
        elif (words := _words(hints[name], value)) is None:
            raise ConfigError(f"{path}{name}={value!r} in {where} is a mapping, not a value.")
        else:
            changes[name] = typed(hints[name], words, path + name, f" in {where}")
    return _built(lambda: dataclasses.replace(base, **changes))


def _built(make: typing.Callable[[], Any]) -> Any:
    """`make()`, with a model-layer ValueError (SAEConfig, SyntheticConfig check themselves
    without importing this package) as the ConfigError it stands for."""
    try:
        return make()
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_yaml(cls: type, path: str | Path, base: Any = None) -> Any:
    """Read a YAML config file into dataclass `cls` (over `base`, default `cls()`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({first}).") from None
    return from_yaml(cls, {} if data is None else data, str(path), base)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the config beside an output, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# -- the command line --------------------------------------------------------------------------


def _description(cls: type) -> str:
    """The help's first lines: the command's docstring and the fields without a flag."""
    leaves = set(leaf_fields(cls))
    hidden = sorted(h if h in leaves else f"{h}.*" for h in yaml_only(cls))
    doc = (cls.__doc__ or "").strip()
    return f"{doc}\n\nSet in the YAML config file only: {', '.join(hidden)}." if hidden else doc


def _given(args: list[str], flag: str) -> Any:
    """The word(s) given to `flag` on the command line."""
    for i, word in enumerate(args):
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
        if word == flag:
            rest = list(args[i + 1 :])
            for j, w in enumerate(rest):
                if w.startswith("--"):
                    rest = rest[:j]
                    break
            return rest[0] if len(rest) == 1 else rest
    return None


def _flag_field(cls: type, flag: str) -> str:
    """The dotted field of flag `--a.b-c` ('a.b_c'); a negated bool's field for `--no-x`."""
    return flag.removeprefix("--").replace("-", "_")


def _one_line(cls: type, args: list[str], prog: str, box: str) -> str:
    """tyro's error box as one sentence naming the field, the value and what is valid."""
    rows: list[str] = []  # the rows between the title and the first rule (a box or plain text)
    for line in re.sub(r"\x1b\[[0-9;]*m", "", box).splitlines()[1:]:
        text = line.strip().strip("│|").strip()
        if text and set(text) <= set("─-"):
            if rows:
                break
        elif text:
            rows.append(text)
    text = " ".join(rows)
    if m := re.match(r"Unrecognized options: (\S+?),?(?: |$)", text):
        return _unknown(cls, m.group(1), prog)
    if m := re.match(
        r"invalid choice '(.*)' for argument '(--[^']+)'\. Expected one of \((.*)\)", text
    ):
        name = _flag_field(cls, m.group(2))
        return f"{name}={m.group(1)!r} is not one of {m.group(3)}."
    if m := re.match(r"Error parsing (--\S+?):", text):
        name = _flag_field(cls, m.group(1))
        return f"{name}={_given(args, m.group(1))!r} must be {valid(_hint_of(cls, name))}."
    if m := re.match(r"Error parsing [^:]*: (.*)", text):
        return m.group(1)  # a config's own check (`__post_init__`): already one sentence
    return text or f"bad command line {' '.join(args)!r}; `{prog} --help` lists the options."


def _unknown(cls: type, word: str, prog: str) -> str:
    """The one-line error for a word tyro did not take."""
    if not word.startswith("--"):
        return (
            f"unexpected word {word!r} on the command line: a true/false option takes no value "
            "(--quiet or --no-quiet), and only the first word may be a config file."
        )
    flag = word.split("=", 1)[0]
    if owner := _owner(cls, _flag_field(cls, flag)):
        return (
            f"{owner} is set in the YAML config file only (e.g. configs/*.yaml), not as the "
            f"flag {flag}."
        )
    flags = ["--" + f.replace("_", "-") for f in leaf_fields(cls) if not _owner(cls, f)]
    near = difflib.get_close_matches(flag, flags, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"unknown option {flag}{hint}; `{prog} --help` lists the options."


def _tyro(cls: type, args: list[str], prog: str, default: Any) -> Any:
    kwargs = {} if default is None else {"default": default}
    return tyro.cli(cls, args=args, prog=prog, description=_description(cls), **kwargs)


def cli(cls: type, args: list[str], prog: str, default: Any = None) -> Any:
    """`tyro.cli` of `cls` over `default`; its error (a box on stderr, exit 2) as one ConfigError
    line. `--help` prints the help and exits."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return _built(lambda: _tyro(cls, args, prog, default))
    except SystemExit as e:
        if e.code in (0, None):
            raise
    # Read the error again with the box as wide as its longest row (tyro wraps the box to the
    # terminal's width), so that each row is one line.
    box, columns = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100000"
    try:
        with contextlib.redirect_stderr(box):
            _tyro(cls, args, prog, default)
    except SystemExit:
        pass
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    raise ConfigError(_one_line(cls, args, prog, box.getvalue()))


def parse_cli(
    cls: type, default: Any, args: list[str], prog: str, source: str = "the defaults"
) -> Any:
    """`default` (read from `source`, a file's name) overridden by command-line flags. A model's
    own code is trusted only as `sae.config.trust` says."""
    return trust_from_command_line(default, lambda d: cli(cls, args, prog, d), source)


def parse(cls: type, argv: list[str], prog: str, base: Any = None) -> Any:
    """Config from an optional leading YAML path over `base` (default: the class defaults), plus
    flag overrides."""
    if argv and not argv[0].startswith("-"):
        return parse_cli(cls, load_yaml(cls, argv[0], base), argv[1:], prog, repr(argv[0]))
    return parse_cli(cls, base, argv, prog)
