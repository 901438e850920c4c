"""Joining Ray: a private local Ray by default, a cluster when one is named, the job's cluster under
`ray job submit`.

The private local Ray is closed to the network and to other users as far as Ray allows: its node address
is 127.0.0.1, so the dashboard agent, the runtime-env agent and everything that binds the node address
listen on loopback only (ray.init turns a 127.0.0.1 `_node_ip_address` back into the external address;
Ray's single-machine mode, the one macOS and Windows use, keeps loopback), no dashboard; and token auth
stays on with a token the private cluster owns: 0600 in its own 0700 folder, passed by
`RAY_AUTH_MODE=token` + `RAY_AUTH_TOKEN_PATH`, so dyrank never reads or creates `~/.ray/auth_token` (Ray
2.60 writes one there, mode 0644, when no token is configured). The gRPC servers of GCS, raylet and
workers bind all interfaces in Ray's C++ code whatever the node address: the token is what guards them.
README.md, "Network exposure", lists each listener and why."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import ray

from orchestrator.errors import RayConnectError

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted entrypoint


def in_ray_job() -> bool:
    return JOB_ENV in os.environ


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, where ray.init would retry for minutes."""
    address = os.environ.get("RAY_ADDRESS") or address
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise RayConnectError(f"cannot reach Ray at {address}: {exc}") from None


LOOPBACK = "127.0.0.1"


def private_cluster_auth() -> Path:
    """A fresh 0700 folder holding a 0600 token for the private cluster, and the environment that makes Ray
    (this process and every process it starts) use it. Returns Ray's temp folder, inside it (Ray makes its
    own temp folder 0777; the 0700 parent keeps other users out)."""
    folder = Path(tempfile.mkdtemp(prefix="dyrank-ray-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, True)
    token = folder / "auth_token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # a token value in the env would win over the file
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    # Ray caches the auth mode and the token per process (pinned 2.60 internals: refresh both).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return folder / "ray"


def _single_machine_mode(on: bool) -> None:
    """Ray's own switch for a node that stays on loopback: read by services.get_node_ip_address at call time
    here, and from the environment by the processes the private cluster starts. Off again before joining a
    real cluster from the same process (tests do both)."""
    from ray._private import ray_constants

    if on:
        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    else:
        os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
    ray_constants.ENABLE_RAY_CLUSTER = not on


def connect(address: str | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or address
    try:
        if address:
            _single_machine_mode(False)
            ray.init(address=address, log_to_driver=False)
        else:
            # "local" starts a fresh private cluster, never silently joining one left running.
            temp_dir = private_cluster_auth()
            _single_machine_mode(True)
            try:
                ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, include_dashboard=False,
                         log_to_driver=False, _temp_dir=str(temp_dir))
            finally:
                # The private cluster's processes have it in their environment now; anything this process starts
                # later (another `ray start`, a job) must not inherit loopback-only mode.
                from ray._private import ray_constants

                os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayConnectError(f"cannot reach Ray at {address or 'local'}: {first_line}") from None
