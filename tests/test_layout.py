"""The renovation's rules for the product's code, kept by a test (issue 10): rooms a newcomer can find.

No module in ``proxykernel/`` or ``remote_agent/`` (test scaffolding in ``proxykernel/testing/`` aside)
is over 450 lines, no class over 250, and every class says in its docstring what it is for.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250


def product_modules() -> List[Path]:
    paths = sorted((ROOT / "proxykernel").glob("*.py")) + sorted((ROOT / "remote_agent").glob("*.py"))
    assert len(paths) > 10
    return paths


def classes(path: Path) -> List[Tuple[str, int, bool]]:
    """(name, lines, has a docstring) for every class in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.name, (node.end_lineno or node.lineno) - node.lineno + 1, ast.get_docstring(node) is not None)
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def test_no_module_is_over_450_lines() -> None:
    long = {path.name: n for path in product_modules()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_class_is_over_250_lines_and_each_says_what_it_is() -> None:
    found = [(path.name, name, lines, documented) for path in product_modules()
             for name, lines, documented in classes(path)]
    assert any(name == "Proxy" for _, name, _, _ in found)
    assert [entry for entry in found if entry[2] > MAX_CLASS_LINES] == []
    assert [entry[:2] for entry in found if not entry[3]] == []
