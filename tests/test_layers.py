"""The import rules of the architecture (DESIGN section 7), checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("logplex", "drains", "shims")
CODEC_FORBIDDEN = {"trio", "socket", "time", "asyncio", "select", "selectors", "ssl", "threading"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative import: resolve against the module's package.
                package = path.relative_to(ROOT).parent.parts
                base = package[: len(package) - (node.level - 1)]
                found.add(".".join((*base, node.module or "")).rstrip("."))
            elif node.module:
                found.add(node.module)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if m.split(".")[0] in PROJECT}


@pytest.mark.parametrize("path", sources("logplex/codecs"), ids=lambda p: p.name)
def test_codecs_are_sans_io_and_self_contained(path: Path) -> None:
    modules = imported_modules(path)
    assert not {m.split(".")[0] for m in modules} & CODEC_FORBIDDEN
    assert all(m.startswith("logplex.codecs") for m in project_imports(path))


@pytest.mark.parametrize("path", sources("drains") + sources("shims"), ids=str)
def test_drains_and_shims_import_only_codecs(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    for module in project_imports(path):
        assert module.startswith(("logplex.codecs", package)), module


@pytest.mark.parametrize(
    "path", sources("logplex") + sources("drains"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_nothing_imports_shims(path: Path) -> None:
    assert not any(m.split(".")[0] == "shims" for m in imported_modules(path))


def test_logplex_package_init_imports_nothing() -> None:
    assert imported_modules(ROOT / "logplex" / "__init__.py") == set()


def test_forbidden_import_is_detected(tmp_path: Path) -> None:
    # The checker itself must see both import forms.
    probe = tmp_path / "probe.py"
    probe.write_text("import trio\nfrom socket import socket\n")
    assert {"trio", "socket"} <= imported_modules(probe)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Project module -> the project modules it imports anywhere in its body.

    Function-level and ``TYPE_CHECKING`` imports count: a lazy import that dodges a cycle
    at start-up is still a cycle in the design. ``from package import name`` counts as an
    import of ``package.name`` when that is a module of the tree.
    """
    paths = [p for package in PROJECT for p in sorted((root / package).rglob("*.py"))]
    modules = {module_name(p, root) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        this = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = path.relative_to(root).parent.parts
                    base = ".".join(package[: len(package) - (node.level - 1)])
                    origin = f"{base}.{node.module}" if node.module else base
                else:
                    origin = node.module or ""
                targets.add(origin)
                targets.update(f"{origin}.{alias.name}" for alias in node.names)
        graph[this] = {t for t in targets if t in modules and t != this}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []


def test_cycle_checker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    package = tmp_path / "logplex"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from logplex import b\n")
    (package / "b.py").write_text("from logplex.c import x\n")
    (package / "c.py").write_text("import logplex.a\nx = 1\n")
    (package / "d.py").write_text("from logplex import a\n")  # imports into the cycle only
    assert import_cycles(import_graph(tmp_path)) == [["logplex.a", "logplex.b", "logplex.c"]]
