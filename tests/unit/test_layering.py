"""Surfaces import only downwards: the FHIR I/O and clinical layers know no surface, and no
surface imports another (the app and the CLI compose them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fhir_leuko"
SURFACES = ("fhir_leuko.cdshooks", "fhir_leuko.subscriptions", "fhir_leuko.checkserver")
COMPOSERS = ("fhir_leuko.app", "fhir_leuko.cli", "fhir_leuko.serving", "fhir_leuko.__main__")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _surface(module: str) -> str | None:
    return next((s for s in SURFACES if module == s or module.startswith(s + ".")), None)


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p))
def test_imports_go_downwards(path: Path) -> None:
    module = _module(path)
    if module in COMPOSERS:
        return
    own = _surface(module)
    for imported in _imports(path):
        if imported in COMPOSERS:
            pytest.fail(f"{module} imports {imported}, which composes the surfaces")
        theirs = _surface(imported)
        assert theirs is None or theirs == own, f"{module} imports the surface {imported}"


def test_the_walk_sees_the_surfaces() -> None:
    assert any(_module(p) == "fhir_leuko.subscriptions.worker" for p in MODULES)
    assert "fhir_leuko.fhirio.server" in _imports(PACKAGE / "subscriptions" / "worker.py")
