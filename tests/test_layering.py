"""The import rule of docs/ARCHITECTURE.md, checked on the source: packages
import only downwards (nets <- anytime <- scheduler <- simulator, the command
line on top), no module imports an underscore name from another module, and
there are no import cycles between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"nets": 0, "anytime": 1, "scheduler": 2, "simulator": 3}
# the command line ties every package together (ARCHITECTURE.md); ``python -m anytime`` runs it
TOP_FLOOR = {"anytime.cli": 4, "anytime.__main__": 4}


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_only_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations, not run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, runtime_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import in a file, lazy ones
    included; ``runtime_only`` leaves out those made only for type checking."""
    tree = ast.parse(path.read_text())
    skip = _type_only_lines(tree) if runtime_only else set()
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def _layer(module: str) -> int | None:
    if module in TOP_FLOOR:
        return TOP_FLOOR[module]
    return LAYERS.get(module.split(".")[0])


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_names_are_public(module):
    problems = []
    own = _layer(module)
    for target, names, line in _imports(MODULES[module]):
        layer = _layer(target)
        if layer is None:
            continue
        if layer > own:
            problems.append(f"line {line}: {module} (layer {own}) imports {target} (layer {layer}) above it")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private and target != module:
            problems.append(f"line {line}: imports private {', '.join(private)} from {target}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    """No cycles among the imports that run (type-checking imports are annotations)."""
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        for target, names, _ in _imports(path, runtime_only=True):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in MODULES and candidate != module:
                    graph.add_edge(module, candidate)
                    break
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_the_rule_catches_what_it_should(tmp_path):
    """The checker itself: an upward import and a private import are found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from simulator.engine import Simulation\nfrom scheduler.select import _pareto\n")
    found = _imports(bad)
    assert any(_layer(t) == 3 for t, _, _ in found)
    assert any("_pareto" in names for _, names, _ in found)
