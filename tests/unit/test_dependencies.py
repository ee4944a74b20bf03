"""Every package the code imports is declared in pyproject.toml, not only present by luck."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _top_level_imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _declared(*groups: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for group in groups:
        reqs += project["optional-dependencies"][group]
    return {_normal(re.split(r"[\[<>=~!; ]", r, maxsplit=1)[0]) for r in reqs}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _undeclared(folder: str, declared: set[str]) -> dict[str, list[str]]:
    """Third-party modules imported under ``folder`` whose distribution is not declared."""
    owners = importlib.metadata.packages_distributions()
    # The project's own modules and folders (tests import helpers beside them by name).
    local = {p.name for p in ROOT.iterdir()}
    for path in (ROOT / folder).rglob("*.py"):
        local |= {path.stem, *(parent.name for parent in path.parents)}
    missing: dict[str, list[str]] = {}
    for module in sorted(_top_level_imports(ROOT / folder)):
        if module in sys.stdlib_module_names or module in local or module == "fhir_leuko":
            continue
        dists = {_normal(d) for d in owners.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    return missing


def test_the_package_imports_only_declared_dependencies() -> None:
    assert _undeclared("fhir_leuko", _declared()) == {}


def test_the_tests_import_only_declared_dependencies() -> None:
    assert _undeclared("tests", _declared("test")) == {}


def test_the_check_sees_an_undeclared_import() -> None:
    """The check itself: with starlette left out of the declared set it must be reported."""
    declared = _declared() - {"starlette"}
    assert "starlette" in _undeclared("fhir_leuko", declared)
