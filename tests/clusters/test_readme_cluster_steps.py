"""The README's "On a Ray cluster" steps work in order on a fresh machine: the code block is read out of
README.md (so the doc and this test cannot drift) and run as written under an empty HOME, only `/abs/path`
filled in. Everything it starts is on loopback and stopped by PID afterwards (never `ray stop`, which
would end every Ray of this user)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.support.processes import port_free

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a Ray head and worker started as the README does, then a pipeline
VENV = Path(sys.executable).parents[1] if (Path(sys.executable).parent / "ray").exists() else None


def readme_cluster_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## On a Ray cluster\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _stop_marked(marker: str) -> None:
    """End every process carrying this test's marker in its environment (the Ray nodes it started), by PID."""
    def marked():
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("DYRANK_README_TEST") == marker:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = marked()
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=15)


def test_readme_block_order_is_right_for_a_fresh_home():
    """Fast half: the token is generated before RAY_AUTH_TOKEN_PATH is exported (Ray 2.60 fails otherwise)."""
    lines = [line for line in readme_cluster_block().splitlines() if line.strip()]
    generate = next(i for i, line in enumerate(lines) if "get-auth-token --generate" in line)
    export = next(i for i, line in enumerate(lines) if "RAY_AUTH_TOKEN_PATH=" in line)
    assert generate < export and "umask 077" in lines[generate]


@pytest.mark.skipif(VENV is None, reason="needs the project's virtual environment (ray on its bin/)")
def test_readme_cluster_steps_run_verbatim_with_a_private_home(tmp_path):
    if not (port_free(8265) and port_free(6379)):
        pytest.skip("ports 8265/6379 (the README's defaults) are taken by another Ray on this machine")
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    (project / ".venv").symlink_to(VENV)  # "the project's environment", as `make install` leaves it
    (project / "examples").symlink_to(REPO / "examples")
    (project / ".gitignore").write_text(".venv\n")  # `--working-dir .` must not upload the environment
    db = tmp_path / "mlflow.db"
    script = "set -euo pipefail\n" + readme_cluster_block().replace("/abs/path/mlflow.db", str(db))
    marker = uuid.uuid4().hex
    ray_tmp = tempfile.mkdtemp(prefix="rr-")  # short: Ray's unix socket paths are limited
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update({"HOME": str(home), "PATH": f"{VENV / 'bin'}:{env['PATH']}", "PYTHONPATH": str(REPO),
                "RAY_TMPDIR": ray_tmp, "DYRANK_README_TEST": marker})
    try:
        done = subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True,
                              timeout=900, start_new_session=True)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
        assert "parent run:" in done.stdout + done.stderr
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600
        runs = MlflowClient(f"sqlite:///{db}").search_runs(
            [MlflowClient(f"sqlite:///{db}").get_experiment_by_name("tiny").experiment_id],
            "tags.`dyrank.kind` = 'pipeline'")
        assert [r.info.status for r in runs] == ["FINISHED"]
    finally:
        _stop_marked(marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
