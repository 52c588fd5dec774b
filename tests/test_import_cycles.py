"""No import cycles in davserver/: every import counts, also one inside a function or
under ``if TYPE_CHECKING:``, since both only hide a cycle (fs.py and fastpath.py
imported each other that way until sharefs.py took the facts both need)."""

from __future__ import annotations

import ast
import subprocess
import tarfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "davserver"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported davserver module: line of the first such import}, from the AST of
    every ``*.py`` under ``root`` (the package folder), imports at any depth included."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {m: {} for m in files}
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for name in candidates:
                if name in files and name != module:
                    graph[module].setdefault(name, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"


def test_davserver_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "davserver.fs" in graph and "davserver.fastpath" in graph["davserver.fs"]  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + _describe(graph, cycle)


def test_the_check_finds_cycles_of_every_kind(tmp_path: Path) -> None:
    """The twin: a module-level, a function-level and a TYPE_CHECKING cycle are each found."""
    kinds = {
        "top": "from . import b\n",
        "function": "def f():\n    from .b import x\n    return x\n",
        "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n",
        "absolute": "import pkg.b\n",
        "subpackage": "from .sub.c import y\n",
    }
    for kind, a_source in kinds.items():
        root = tmp_path / kind / "pkg"
        (root / "sub").mkdir(parents=True)
        (root / "__init__.py").write_text("")
        (root / "sub" / "__init__.py").write_text("")
        (root / "a.py").write_text(a_source)
        (root / "b.py").write_text("from .a import z\nx = 1\n")
        (root / "sub" / "c.py").write_text("from ..a import z\ny = 1\n")
        cycle = find_cycle(import_graph(root))
        assert cycle is not None and cycle[0] == cycle[-1] and "pkg.a" in cycle, kind
        (root / "b.py").write_text("x = 1\n")  # the legitimate case: one way only
        (root / "sub" / "c.py").write_text("y = 1\n")
        assert find_cycle(import_graph(root)) is None, kind


def test_the_check_fails_on_the_tree_before_sharefs(tmp_path: Path) -> None:
    """The check catches the cycle the issue names: davserver/ as of the commit before
    sharefs.py (fs.py -> fastpath.py -> fs.py under TYPE_CHECKING, copymove.py -> fs.py
    in functions)."""
    repo = PACKAGE.parent
    try:
        tar = subprocess.run(["git", "-C", str(repo), "archive", "23c7865", "davserver"], capture_output=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pytest.skip("not a git checkout holding commit 23c7865")
    archive = tmp_path / "old.tar"
    archive.write_bytes(tar)
    with tarfile.open(archive) as t:
        t.extractall(tmp_path, filter="data")
    cycle = find_cycle(import_graph(tmp_path / "davserver"))
    assert cycle is not None and "davserver.fs" in cycle
    assert "davserver.fs" in import_graph(tmp_path / "davserver")["davserver.fastpath"]
