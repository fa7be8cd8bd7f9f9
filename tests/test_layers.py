"""The import graph of dfkd/ is layered and has no cycle: errors -> core -> run -> api -> commands, imports only
going down (late imports inside functions count too), so any module can be read, tested and reused alone."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dfkd"
LAYERS = {  # module (dfkd.NAME; dfkd.models.* are core) -> layer
    "errors": 0,
    **dict.fromkeys(["features", "losses", "priors", "onestage", "schemes", "batches", "pool", "ema", "methods", "machine",
                     "models"], 1),
    **dict.fromkeys(["schema", "config", "card", "contract", "weights", "sources", "data", "offline", "accuracy", "checks",
                     "teacher", "build", "trainer", "samples", "checkpoint", "formats", "quantize", "artifacts", "fidelity"], 2),
    **dict.fromkeys(["__init__", "api", "comparison", "results"], 3),  # the public functions: dfkd.distill, ...
    **dict.fromkeys(["cli", "commands", "distill", "evaluate"], 4),  # argument parsing and printing
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The dfkd modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    key = "__init__" if module == "dfkd" else parts[1]
    assert key in LAYERS, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py (and docs/extending.md)"
    return LAYERS[key]


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules, or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: List[str]) -> List[str]:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return []


def test_dfkd_has_no_import_cycle():
    edges = graph()
    assert "dfkd.build" in edges["dfkd.trainer"] and "dfkd.errors" in edges["dfkd.config"]  # the graph is read
    cycle = find_cycle(edges)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_only_go_down_the_layers(module):
    upward = [f"{other} (layer {layer(other)})" for other in sorted(graph()[module])
              if layer(other) > layer(module) and not other.startswith(module + ".")]
    assert not upward, f"{module} (layer {layer(module)}) imports from a higher layer: {', '.join(upward)}"
