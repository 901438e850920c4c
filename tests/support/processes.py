"""Processes a test starts and must stop: free loopback ports, waiting for a server, stopping by PID.

Every server is started in its own session, so its process group id is its PID: stopping the group
ends what it forked (Ray's raylet and workers, uvicorn's workers) and nothing of anyone else's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Until url answers; any HTTP status counts (401 from a server with auth on means it is up)."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} before answering at {url}")
            if time.time() > deadline:
                raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")
            time.sleep(0.5)


def stop_groups(procs: list[subprocess.Popen], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """End processes started with start_new_session=True and everything in their groups, by PID; all are
    signalled first and waited for together."""
    for proc in procs:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.5)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of that group still alive
        except ProcessLookupError:
            pass
        proc.wait()


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10) -> None:
    stop_groups([proc], sig, grace)
