"""Trust: what may run a model's own code, and what may name a local file.

Two rules, each in one function that every command goes through:

- `trust_from_command_line`: a model repository's own Python code runs only when this command
  line says `--model.trust-remote-code` (`sae train`, `sae harvest`) or `--trust-remote-code
  True` (`sae eval`, `sae export`). A YAML config, the saved config.yaml that `--resume`
  continues, and an SAE's metadata (`recorded_model_config` in sae/activations/capture.py) never
  turn it on.
- `not_local_from_metadata`: metadata that came with an SAE (its cfg.json, from the Hub or any
  library's folder, or the run's config.yaml above it) names the data source and the model
  `sae eval` and `sae export` read; it may name the built-in ones or a Hub repo, never a local
  file or folder: the user names those on the command line (`--data.source`, `--model-name`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae.config.errors import ConfigError

TRUST = "trust_remote_code"


def trust_from_command_line(
    default: Any, read: Callable[[Any], dict[str, Any]], source: str
) -> dict[str, Any]:
    """`read(default)`: the command line's flags applied to `default` (`cli` in
    sae/config/parse.py; `parse_cli` there calls this for every command), except that every
    `trust_remote_code` field is taken from the flags alone. `default` may have been read from a
    file (`source` names it): its `true` without the flag is a ConfigError naming the flag, so
    `--resume` of a run started with the flag needs it again; `--model.no-trust-remote-code`
    turns a file's `true` off."""
    trusted = _trusting_fields(default)
    if not trusted:
        return read(default)
    base = copy.deepcopy(default)
    for dotted in trusted:
        *parents, name = dotted.split(".")
        setattr(functools.reduce(getattr, parents, base), name, False)
    values = read(base)
    unflagged = [d for d in trusted if _field(values, d) is not True]
    if unflagged:
        as_filed = read(default)  # the file's value stays true unless --model.no-... is given
        for dotted in unflagged:
            if _field(as_filed, dotted) is True:
                flag = "--" + dotted.replace("_", "-")
                raise ConfigError(
                    f"{dotted}: true in {source} is not taken from a file: a model's own code "
                    f"runs only when this command line says {flag} (read that code, then pass "
                    f"{flag})."
                )
    return values


def _trusting_fields(cfg: Any, path: str = "") -> list[str]:
    """Dotted names of the `trust_remote_code` fields that are true in config dataclass `cfg`."""
    if not dataclasses.is_dataclass(cfg):
        return []
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == TRUST and value is True:
            found.append(path + f.name)
        found += _trusting_fields(value, f"{path}{f.name}.")
    return found


def _field(obj: Any, dotted: str) -> Any:
    """Dotted field `dotted` of a config dataclass or of its nested dict (None if absent)."""
    for name in dotted.split("."):
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".arrow", ".safetensors", ".gguf")


def is_local(name: str) -> bool:
    """Whether the loaders would read `name` (a data source or a model name) from this
    machine's files: it exists here, or it is written as a path (absolute, ./, ~, a backslash, a
    drive letter, a file suffix). 'builtin' and Hub repo names ('org/name', 'name') that exist nowhere here are
    not local: they come from the Hub (or its cache) or from the installed package."""
    if name == "builtin":
        return False
    if name.startswith(("/", ".", "~")) or "\\" in name or name[1:2] == ":":
        return True
    if name.lower().endswith(_FILE_SUFFIXES):
        return True
    return Path(name).exists()


def not_local_from_metadata(name: str, field: str, flag: str, where: str) -> str:
    """`name`, which an SAE's metadata gave for `field` (`where` says which SAE and file), when
    it is the built-in one or a Hub repo. A local path there is a ConfigError naming `flag`:
    metadata can come from anyone, and reading a file it names could put a private file's text
    into a report or an upload (a Neuronpedia batch); the user names local files."""
    if is_local(name):
        raise ConfigError(
            f"the SAE in {where} names {field}={name!r}, a local path; an SAE's metadata never "
            f"makes a command read a local file: to read it, name it yourself with {flag} {name}."
        )
    return name
