"""Dependencies point one way, read from the source: trainers/ and evaluators/ (and their tests) never import the
orchestrator, Ray or MLflow; orchestrator/ meets dashboards/ only in its CLI; the job config imports no torch.
And every example YAML still validates."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "trainers": ("orchestrator", "dashboards", "ray", "mlflow", "optuna"),
    "evaluators": ("orchestrator", "dashboards", "ray", "mlflow", "optuna"),
    "tests/trainers": ("orchestrator", "dashboards"),
    "tests/evaluators": ("orchestrator", "dashboards"),
    "orchestrator": ("dashboards",),
}
# the CLI (its parser and its two command modules) hands the pipeline's data to dashboards/
ALLOWED = {REPO / "orchestrator" / name for name in ("cli.py", "cli_jobs.py", "cli_tools.py")}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_one_way(folder):
    offending = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        if path in ALLOWED:
            continue
        bad = _imports(path) & set(FORBIDDEN[folder])
        if bad:
            offending[str(path.relative_to(REPO))] = sorted(bad)
    assert not offending, offending


def test_the_job_config_and_the_method_registry_import_no_torch():
    code = ("import sys, trainers.config, trainers.methods; trainers.methods.method_names(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(example):
    from orchestrator.config import load_config
    from orchestrator.study_config import load_study_config

    if example.name.startswith("study"):
        assert load_study_config(example).n_trials > 0
    else:
        assert load_config(example).eval_ranks()
