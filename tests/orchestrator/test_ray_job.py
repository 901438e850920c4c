"""`ray job submit` against a real `ray start --head` on loopback, as the README tells users to run it.

The test starts its own head node (own RAY_TMPDIR and ports) and ends it through the process group it
started: `ray stop` would end every Ray on the machine, so it is never called.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    gcs, dashboard, client, agent, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = free_ports(9)
    temp = Path("/tmp") / f"rayjob-{os.getpid()}"  # short: Ray's unix socket paths have a length limit
    token = tmp_path / "ray_token"  # token auth on, with a token of the test's own
    token.write_text(uuid.uuid4().hex)
    env = {**os.environ, "RAY_TMPDIR": str(temp), "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
         "--runtime-env-agent-port", str(runtime_env), "--node-manager-port", str(node_mgr),
         "--object-manager-port", str(obj_mgr), "--num-cpus", "2", "--temp-dir", str(temp)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # 401 without the token: the server is up
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    raise RuntimeError("ray head did not come up")
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        time.sleep(1)
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of that group still alive
        except ProcessLookupError:
            pass


def test_ray_job_submit_runs_the_pipeline_into_the_given_store(ray_head, tmp_path):
    address, env = ray_head
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": uri, "DYRANK_HOME": os.environ["DYRANK_HOME"]}}
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "dyrank", "run", "examples/tiny.yaml", "--set", "baselines.ranks=[2]", "--set", "evaluation.ranks=[1,4,8]"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("dyrank.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    evals = [r for r in runs if r.data.tags.get("dyrank.kind") == "eval"]
    assert sorted(int(r.data.params["rank"]) for r in evals) == [1, 4, 8]
