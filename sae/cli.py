"""The `sae` command line: `sae COMMAND [CONFIG.yaml] [--dotted.overrides ...]`.

    sae train                                     # built-in default (MiniLM layer 3, Python docs)
    sae train configs/minilm_topk.yaml --sae.k 64 --out checkpoints/k64
    sae harvest configs/harvest.yaml --data.max-windows 512 --out caches/small
    sae train --help                              # flags, units, defaults; YAML-only fields named

The YAML file gives the defaults, flags override them, and the resolved config is saved beside
every output. A bad value stops the command with one line on stderr (exit code 2) before any
work starts.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from sae.config import ConfigError
from sae.config.parse import load_yaml, parse, parse_cli
from sae.config.schema import HarvestConfig
from sae.fsutil import ForeignFolderError

USAGE = """usage: sae COMMAND [CONFIG.yaml] [--section.field VALUE ...]

commands:
  harvest   run the model over the data and write an activation cache
  train     train one or more SAEs (live activations, a cache, or a .npy/.safetensors file)
  eval      score SAEs: `sae eval SAE_DIR [SAE_DIR ...] --suite core,synthetic --out REPORT_DIR`
  export    `sae export SAE_DIR --format saelens|neuronpedia|dashboard --out DIR`

`sae COMMAND --help` lists the options with their units and defaults (`sae train --help` also
names the fields set in the YAML file only)."""


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _harvest(argv: list[str]) -> str:
    from sae.activations.harvest import harvest

    cfg = parse(HarvestConfig, argv, "sae harvest")
    return str(harvest(cfg))


def _train_config(argv: list[str]):
    """The config file if one is given; else, once the flags are read, DIR/config.yaml under them
    for `--resume --out DIR`, the built-in run (BUILTIN_TOKENS) when no --activations is given,
    or the class defaults."""
    from sae.config.schema import BUILTIN_TOKENS, TrainConfig

    cfg = parse(TrainConfig, argv, "sae train")
    if argv and not argv[0].startswith("-"):  # a config file is the base
        return cfg
    saved = Path(cfg.out) / "config.yaml"
    if cfg.resume and saved.is_file():  # `--resume --out DIR` continues DIR's run
        source = f"{str(saved)!r} (the run --resume continues)"
        return parse_cli(TrainConfig, load_yaml(TrainConfig, saved), argv, "sae train", source)
    if cfg.activations is None:  # the built-in run: 1M MiniLM tokens
        return parse(TrainConfig, argv, "sae train", TrainConfig(total_tokens=BUILTIN_TOKENS))
    return cfg


def _train(argv: list[str]) -> str:
    from sae.training.train import train

    finals = train(_train_config(argv))
    if not finals:  # stopped by a signal after writing a checkpoint
        sys.exit(130)
    for folder in finals[:-1]:
        print(folder)
    return str(finals[-1])


def _eval(argv: list[str]) -> str:
    import sae.eval

    return sae.eval.cli_main(argv)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        if not e.filename:
            return str(e.strerror)
        # An atomic write fails on its temporary `.NAME.XXXXXXXX.tmp` (sae/fsutil.py): name NAME.
        name = Path(os.fsdecode(e.filename))
        if m := re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name.name):
            name = name.with_name(m.group(1))
        return f"{e.strerror} writing {name}"
    return str(e).splitlines()[0][:200]


def _export(argv: list[str]) -> str:
    from sae.export.cli import cli_main

    return cli_main(argv)


COMMANDS: dict[str, Callable[[list[str]], str]] = {
    "harvest": _harvest,
    "train": _train,
    "eval": _eval,
    "export": _export,
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; valid commands are {sorted(COMMANDS)}.",
            file=sys.stderr,
        )
        sys.exit(2)
    _quiet_libraries()
    from sae import dist
    from sae.training.malloc import keep_freed_memory

    keep_freed_memory()  # no page faults for the step's freed tensors (sae/training/malloc.py)

    dist.init_from_env()  # under torchrun: join the process group
    try:
        result = COMMANDS[command](rest)
    except (ConfigError, ForeignFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        from sae.fsutil import disk_full

        if not disk_full(e):
            raise
        # Every write is atomic, so what is on disk is whole: the last checkpoint, the shards.
        print(
            f"error: out of disk space ({_reason(e)}); nothing complete was lost: free space and "
            "rerun the same command (with --resume for `sae train`).",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume.", file=sys.stderr)
        sys.exit(130)
    # The last line printed is the output's path, for scripts.
    if dist.is_main():
        print(result if "://" in str(result) else Path(result))  # URLs keep their '//'
