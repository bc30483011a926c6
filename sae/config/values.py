"""Config values as YAML reads them and as the dataclass fields declare them.

`yaml_load` is PyYAML's safe loader that also reads YAML 1.2 floats such as `1e-3` (YAML 1.1,
which PyYAML implements, wants a dot: `1.0e-3`, and reads `1e-3` as the string '1e-3').
`type_problem(value, hint)` says what is wrong with a value for a field's annotation, or None.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Literal

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 floats without a dot (`1e-3`, `5E+0`, `1_000e3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text_or_stream) -> Any:
    return yaml.load(text_or_stream, Loader=_Loader)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"one of {list(args)}"
    literals = [a for a in args if typing.get_origin(a) is Literal]
    if bool in args and len(literals) == len(args) - 1:  # `bool | Literal[...]`
        choices = [repr(c) for a in literals for c in typing.get_args(a)]
        return ", ".join([*choices, "true"]) + " or false"
    if origin in (typing.Union, types.UnionType):
        arms = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(arms) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in args and not isinstance(value, bool | float)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True  # nested dataclasses and anything else are checked where they are built


def type_problem(value: Any, hint: Any) -> str | None:
    """'must be an integer' (and so on) if `value` does not fit annotation `hint`, else None."""
    return None if _fits(value, hint) else f"must be {_describe(hint)}"
