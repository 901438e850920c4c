"""The private local Ray listens on loopback only, keeps token auth on with a 0600 token of its own, and
never reads or creates ~/.ray/auth_token. Run in a subprocess with a private, empty HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, re, subprocess
import psutil, ray
from orchestrator import ray_runtime

ray_runtime.connect(None)

@ray.remote
def pid():
    return os.getpid(), os.environ.get("RAY_AUTH_MODE")

tasks = ray.get([pid.remote() for _ in range(2)])
mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
listeners = []
for flags in ("-ltnpH", "-lunpH"):
    for line in subprocess.run(["ss", flags], capture_output=True, text=True).stdout.splitlines():
        if {int(x) for x in re.findall(r"pid=(\d+)", line)} & mine:
            listeners.append(line.split()[3])
token = os.environ["RAY_AUTH_TOKEN_PATH"]
print(json.dumps({"listeners": listeners, "token": token, "token_mode": os.stat(token).st_mode & 0o777,
                  "folder_mode": os.stat(os.path.dirname(token)).st_mode & 0o777, "task_auth": [t[1] for t in tasks],
                  "home": sorted(os.listdir(os.environ["HOME"]))}))
ray.shutdown()
"""


@pytest.fixture
def private_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return home, {**env, "HOME": str(home), "PYTHONPATH": str(REPO)}


def test_private_ray_is_loopback_only_with_its_own_token(private_home):
    home, env = private_home
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["listeners"], "the probe saw Ray's listeners"
    for address in report["listeners"]:
        host = address.rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"), f"Ray listens beyond loopback: {address}"
    assert report["task_auth"] == ["token", "token"], "workers run with token auth on"
    assert report["token_mode"] == 0o600 and report["folder_mode"] == 0o700
    assert not report["token"].startswith(str(home))
    assert report["home"] == [], "nothing under HOME: no ~/.ray/auth_token read or written"
    assert not Path(report["token"]).exists(), "the private token goes with the process"
