"""Joining Ray: a private local Ray by default, a cluster when one is named, the job's cluster under
`ray job submit`. The dashboard binds to 127.0.0.1: an unauthenticated Jobs API is remote code execution."""

from __future__ import annotations

import os
import socket

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


def connect(address: str | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or address
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # "local" starts a fresh private cluster, never silently joining one left running.
            ray.init(address="local", dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayConnectError(f"cannot reach Ray at {address or 'local'}: {first_line}") from None
