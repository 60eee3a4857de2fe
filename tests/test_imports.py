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
