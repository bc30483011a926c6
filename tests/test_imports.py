"""The package's imports flow one way: no cycle between `sae` modules, even through an import
hidden inside a function or under `if TYPE_CHECKING:` (both only delay a cycle, not remove it),
and the folders stand in the order ARCHITECTURE.md states (`LAYERS`)."""

from __future__ import annotations

import ast
from pathlib import Path

import sae

ROOT = Path(sae.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the sae modules it imports anywhere in its body (top level and in functions)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from sae import dist` imports the submodule sae.dist, not just the package.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle():
    """Known answer: the detector reports a -> b -> a and nothing for a chain."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_function_level_imports():
    """The walk must include imports inside functions (the way the sae <-> losses cycle hid)."""
    graph = import_graph()
    assert "sae.training.train" in graph["sae.cli"]  # cli imports the trainer inside _train


def test_no_import_cycle_between_sae_modules():
    """Pins the sae <-> losses and train <-> heldout cycles of issue 9: the loss depends on the
    SAE module, held-out scoring takes data, not the Trainer."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


LAYERS: list[set[str]] = [
    {"__main__"},  # `python -m sae`
    {"sae", "cli"},  # the package root (`sae.load`, lazily) and the command line
    {"export"},  # reads what eval wrote
    {"eval", "training"},  # the two stages that run SAEs on activations; neither imports the other
    {"interpret"},  # pure numpy scoring the eval suites call
    {"activations"},
    {"io"},
    {"config"},
    {"model"},
    {"analysis"},  # pure mathematics
    {"dist", "fsutil"},
]
"""Folders (and top-level modules) from the top down: a module imports from its own folder and
from layers below its own, never from a layer above nor from a sibling in its layer."""


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sae"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up the `LAYERS` order or sideways within a layer."""
    rank = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    bad = []
    for module, targets in graph.items():
        u = _unit(module)
        for t in targets:
            v = _unit(t)
            if u != v and rank[v] <= rank[u]:
                bad.append(f"{module} imports {t}")
    return sorted(bad)


def test_every_folder_has_a_layer():
    """A new folder or top-level module must be placed in the order, not slip past the check."""
    units = {_unit(m) for m in import_graph()}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_layer_check_sees_an_upward_import():
    """Known answer: analysis importing eval (the eval <-> export tangle of issue 26) is reported,
    eval importing analysis is not."""
    graph = {"sae.analysis.spectrum": {"sae.eval.core"}, "sae.eval.core": {"sae.analysis.spectrum"}}
    assert layer_violations(graph) == ["sae.analysis.spectrum imports sae.eval.core"]
    assert layer_violations({"sae.eval.core": {"sae.training.train"}}) == [
        "sae.eval.core imports sae.training.train"
    ]


def test_folders_import_downward_only():
    """Pins issue 26: eval and export imported each other (eval/capacity.py took export.table,
    export/records.py took eval), and every stage reached the heavy config module for ConfigError."""
    bad = layer_violations(import_graph())
    assert not bad, "imports against the folder order:\n" + "\n".join(bad)


def test_config_error_imports_no_torch():
    """Pins issue 26: raising ConfigError loaded torch and the model (it lived in the config
    dataclasses' module, and the package root imported the loaders)."""
    import subprocess
    import sys

    code = "import sys; from sae.config import ConfigError; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
