"""Every third-party package our code imports is declared in pyproject.toml: the runtime packages as
dependencies, lm_eval in the harness extra. An undeclared import works here only by accident."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata

from tests.conftest import REPO

PACKAGES = ("orchestrator", "trainers", "evaluators", "dashboards", "clusters")
OURS = set(PACKAGES) | {"tests"}


def _top_level_imports() -> set[str]:
    names = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - OURS - set(sys.stdlib_module_names)


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"]) | _declared(project["optional-dependencies"]["harness"])
    providers = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_top_level_imports()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"
