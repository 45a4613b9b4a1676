"""The package's modules import each other without a cycle: each idea has a place below the ones using it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import fxconv

PACKAGE = Path(fxconv.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module -> the package's modules it imports when it is imported (imports inside functions, which
    run later, are not edges)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                edges |= {m for m in (target, *(f"{target}.{a.name}" for a in node.names)) if m in modules}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
        graph[name] = edges - {name}
    return graph


def test_the_package_has_no_import_cycle():
    graph = _imports()
    assert {"fxconv.carry.rule", "fxconv.pipeline"} <= graph.keys() and "fxconv.carry.rule" in graph["fxconv.carry.cat"]
    graphlib.TopologicalSorter(graph).prepare()  # CycleError names the modules of a cycle


def test_a_cycle_would_be_found():
    graph = _imports() | {"fxconv.targets": {"fxconv.pipeline"}}  # pipeline imports targets: a cycle
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        assert {"fxconv.targets", "fxconv.pipeline"} <= set(e.args[1])
    else:
        raise AssertionError("a cycle went unseen")
