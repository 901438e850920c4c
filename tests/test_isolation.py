"""The test session runs in a home of its own (tests/conftest.py): a training step and a private Ray, run as a
user would run them, write nothing into the real user's home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ISOLATED, REPO, TINY_YAML, USER_HOME

# Where dyrank, Ray, Hugging Face, torch and MLflow would write in a home; the rest of the home (shells,
# editors, other tools of whoever runs the suite) may change on its own while the test runs.
WATCHED = (".cache", ".ray", ".config", ".local", ".triton", ".nv", ".mlflow")

STEP = r"""
import json, os, sys
from pathlib import Path
import ray
from orchestrator import ray_runtime
from orchestrator.cli import main
from trainers.paths import cache_dir

code = main(["train", sys.argv[1], "--out", sys.argv[2], "--set", "training.max_steps=1"])
ray_runtime.connect(None)

@ray.remote
def seen():
    return os.environ["HOME"], str(cache_dir())

task_home, task_cache = ray.get(seen.remote())
ray.shutdown()
print(json.dumps({"code": code, "home": str(Path.home()), "cache": str(cache_dir()), "task_home": task_home,
                  "task_cache": task_cache}))
"""


def _snapshot(home: Path) -> dict[str, float]:
    """Every path (with its mtime) under the watched folders, three levels down, and the home's own entries."""
    found = {str(p): 0.0 for p in home.iterdir()} if home.is_dir() else {}
    for top in WATCHED:
        for depth in ("*", "*/*", "*/*/*"):
            for path in (home / top).glob(depth):
                try:
                    found[str(path)] = path.lstat().st_mtime
                except FileNotFoundError:  # gone between glob and stat
                    pass
    return found


def test_session_environment_is_private_to_pytest(tmp_path_factory):
    base = tmp_path_factory.getbasetemp().resolve()
    for key in ("HOME", "DYRANK_HOME"):
        assert Path(os.environ[key]).resolve().is_relative_to(base), (key, os.environ[key])
    assert Path(os.environ["RAY_TMPDIR"]).name.startswith("dyr-") and os.path.isdir(os.environ["RAY_TMPDIR"])
    assert all(not Path(os.environ[key]).resolve().is_relative_to(USER_HOME.resolve()) for key in ISOLATED)
    pip = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
    if (USER_HOME / ".config" / "pip" / "pip.conf").is_file():  # the machine's index is still found, read-only
        assert f"env:\n  {USER_HOME / '.config' / 'pip' / 'pip.conf'}, exists: True" in pip, pip


def test_a_training_step_and_a_private_ray_leave_the_users_home_untouched(tmp_path_factory, tmp_path):
    before = _snapshot(USER_HOME)
    done = subprocess.run([sys.executable, "-c", STEP, str(TINY_YAML), str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and (tmp_path / "run" / "adapter").is_dir()
    base = tmp_path_factory.getbasetemp().resolve()
    for key in ("home", "cache", "task_home", "task_cache"):  # the driver's and a Ray worker's view
        assert Path(seen[key]).resolve().is_relative_to(base), (key, seen[key])
    after = _snapshot(USER_HOME)
    changed = sorted(p for p, mtime in after.items() if before.get(p) != mtime)
    assert not changed, f"written into the user's home: {changed[:20]}"


HOLD_PORTS = r"""
import random, sys
random.sample = lambda population, k: list(population)  # both sessions try the same ports, lowest first
from tests.support.processes import free_ports
print(" ".join(map(str, free_ports(int(sys.argv[1])))), flush=True)
sys.stdin.read()  # hold them until the test is done
"""


def test_ports_reserved_by_one_session_are_never_handed_to_another(monkeypatch):
    from tests.support import processes

    other = subprocess.Popen([sys.executable, "-c", HOLD_PORTS, "5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        theirs = {int(p) for p in other.stdout.readline().split()}
        monkeypatch.setattr(processes.random, "sample", lambda population, k: list(population))
        mine = set(processes.free_ports(5))
    finally:
        other.communicate("")
    assert len(theirs) == 5 and len(mine) == 5 and not theirs & mine, (theirs, mine)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(processes.PORT_RANGE[0] <= p < low for p in theirs | mine), "never a port the kernel may hand out"


def test_a_temporary_tracking_store_gives_back_the_store_that_was_set(tmp_path, monkeypatch):
    from tests.conftest import temp_tracking_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    with temp_tracking_store(tmp_path) as uri:
        assert os.environ["MLFLOW_TRACKING_URI"] == uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////elsewhere/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with temp_tracking_store(tmp_path):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
