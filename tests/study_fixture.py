"""One tiny study for the study, report and UI tests: started, killed mid-study, then run again to the end.

Both runs start from the same folder with no store configured, so they use the defaults a user gets:
./optuna.db and ./mlflow.db there. Session-scoped: the study costs a minute or two of CPU, once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STUDY_YAML = REPO / "examples" / "study-tiny.yaml"


@dataclass
class TinyStudy:
    folder: Path
    storage: str
    tracking_uri: str
    interrupted: dict  # trial number -> params of the trials the kill left RUNNING
    first_output: str
    second_output: str


def _trials(storage: str) -> list:
    import optuna  # here, not at the top: conftest imports this file, and the GPU box (bench/gpu_suite.sh) has no optuna

    try:
        return optuna.load_study(study_name="study-tiny", storage=storage).get_trials(deepcopy=False)
    except Exception:  # the driver has not created the study yet
        return []


def _driver_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return {**env, "PYTHONPATH": str(REPO)}


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    tree = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a crash would
    proc.wait()
    psutil.wait_procs([p for p in tree if isinstance(p, psutil.Process)], timeout=15)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> TinyStudy:
    from optuna.trial import TrialState

    folder = tmp_path_factory.mktemp("study")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    command = [sys.executable, "-m", "orchestrator.cli", "study", str(STUDY_YAML)]
    first = subprocess.Popen(command, cwd=folder, env=_driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and first.poll() is None:
            trials = _trials(storage)
            running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if running and any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
                break
            time.sleep(0.5)
    finally:
        _kill_tree(first)
    first_output = first.stdout.read()
    interrupted = {t.number: t.params for t in _trials(storage) if t.state == TrialState.RUNNING}  # as the crash left them
    assert interrupted, f"the kill should land with a trial finished and one running; driver said:\n{first_output}"
    second = subprocess.run(command, cwd=folder, env=_driver_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    return TinyStudy(folder, storage, f"sqlite:///{folder / 'mlflow.db'}", interrupted, first_output, second.stdout)
