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
