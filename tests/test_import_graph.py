"""No import cycle in the product: ``remote_agent/`` and ``proxykernel/``, read with ``ast``.

Every import counts, at module level (``if TYPE_CHECKING:`` blocks included) and inside functions,
since a lazy import still ties two modules together. A cycle makes a newcomer read both modules at
once and breaks as soon as one of the imports moves to the top; ``attach`` and the agent had one.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("remote_agent", "proxykernel")


def _modules() -> Dict[str, Path]:
    """Module name -> source file, for every .py file of the product packages."""
    found: Dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative ones resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The product modules that ``name`` imports, anywhere in its source."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, name, path.name == "__init__.py")
            # ``from package import module`` imports that module; ``from module import name`` the module.
            targets = [module + "." + alias.name if module + "." + alias.name in modules else module
                       for alias in node.names]
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as a path that starts and ends on the same module, or None."""
    done: Set[str] = set()

    def visit(node: str, path: List[str]) -> Optional[List[str]]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_and_package_imports() -> None:
    graph = import_graph()
    assert "remote_agent.wire" in graph["proxykernel.link"]  # ``from remote_agent import wire``
    assert "remote_agent.paths" in graph["remote_agent.attach"]


def test_no_import_cycle_in_the_product() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
