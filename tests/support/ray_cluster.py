"""A real Ray cluster on loopback: `ray start --head` and `ray start --address` worker nodes, each a
process of its own with its own ports, token authentication on, all in one private temp dir.

`ray stop` would end every Ray on the machine (other tests', other users'), so nodes are stopped through
the process groups started here, workers before the head.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.processes import free_ports, stop_groups, wait_http

BIN = Path(sys.executable).parent


class RayCluster:
    def __init__(self, token_dir: Path, head_cpus: int = 2, head_resources: dict | None = None):
        self.temp = Path("/tmp") / f"ray-{os.getpid()}-{uuid.uuid4().hex[:6]}"  # short: unix socket paths are limited
        token = token_dir / "ray_token"  # token auth on, with a token of the cluster's own (never ~/.ray's)
        token.write_text(uuid.uuid4().hex)
        inherited = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # a real cluster
        self.env = {**inherited, "RAY_TMPDIR": str(self.temp), "PATH": f"{BIN}:{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []
        self.logs = token_dir
        self.gcs_port, dashboard, client = free_ports(3)
        self.address = f"http://127.0.0.1:{dashboard}"
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                             "--ray-client-server-port", str(client)], head_cpus, 0, head_resources)
        try:
            wait_http(f"{self.address}/api/version", self.nodes[0], "ray head")
        except RuntimeError:
            self.stop()
            raise

    def add_worker(self, num_cpus: int, num_gpus: int = 0, resources: dict | None = None) -> None:
        self._start("worker", ["--address", f"127.0.0.1:{self.gcs_port}"], num_cpus, num_gpus, resources)

    def _start(self, role: str, args: list[str], num_cpus: int, num_gpus: int, resources: dict | None) -> None:
        agent, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = free_ports(6)
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", *args,
               "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--resources", json.dumps(resources or {}),
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
               "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr), "--temp-dir", str(self.temp)]
        with open(self.logs / f"{role}-{len(self.nodes)}.log", "w") as log:  # `ray start`'s own errors
            self.nodes.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster, with its token."""
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def nodes_info(self) -> list[dict]:
        out = self.ray("list", "nodes", "--address", self.address, "--format", "json", "--detail")
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(f"ray list nodes: {out.stderr[-2000:]}")
        try:
            nodes = json.loads(out.stdout)
        except json.JSONDecodeError:  # e.g. "No resource in the cluster" while the head itself registers
            raise RuntimeError(f"ray list nodes: {out.stdout[-2000:]}") from None
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 180) -> list[dict]:
        """Until `count` nodes are alive; the state API may answer with nothing while nodes register."""
        deadline = time.time() + timeout
        while True:
            try:
                nodes = self.nodes_info()
                if len(nodes) >= count:
                    return nodes
            except RuntimeError:
                nodes = []
            if time.time() > deadline or any(n.poll() is not None for n in self.nodes):
                logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(self.logs.glob("*.log")))
                raise RuntimeError(f"{len(nodes)} of {count} Ray nodes came up\n{logs}")
            time.sleep(1)

    def stop(self) -> None:
        stop_groups(self.nodes)
        self.nodes = []
        shutil.rmtree(self.temp, ignore_errors=True)  # session logs and sockets
