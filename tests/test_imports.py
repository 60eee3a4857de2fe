"""The package's modules import each other without a cycle, lazy imports (inside functions) included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mgnp_lens"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: the package's modules it imports}`` from every import statement, at any depth."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                root = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t not in (name, "mgnp_lens"):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """The modules that can reach themselves."""
    found = []
    for start in graph:
        stack, seen = list(graph[start]), set()
        while stack:
            m = stack.pop()
            if m == start:
                found.append(start)
                break
            if m not in seen:
                seen.add(m)
                stack.extend(graph[m])
    return sorted(found)


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "mgnp_lens.discovery" in graph and "mgnp_lens.result" in graph["mgnp_lens.discovery"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


#: The layers, bottom to top (docs/how-it-works.md, "Modules"); every other module is a foundation (layer 0).
LAYERS = {"discovery": 1, "result": 1, "baselines": 2, "sweep": 2, "methods": 2, "executors": 2, "plot": 3,
          "report": 3, "cli": 4}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for each import from a module to one in a higher layer (the package's ``__init__`` aside)."""
    def layer(m: str) -> int:
        return LAYERS.get(m.removeprefix("mgnp_lens."), 0)
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if a != "mgnp_lens"
                  for b in targets if layer(b) > layer(a))


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"mgnp_lens.result": {"mgnp_lens.report", "mgnp_lens.circuit"}, "mgnp_lens.circuit": set(),
             "mgnp_lens.report": {"mgnp_lens.result"}}
    assert upward_imports(graph) == ["mgnp_lens.result -> mgnp_lens.report"]
