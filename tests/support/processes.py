"""Processes a test starts and must stop: reserved loopback ports, waiting for a server, stopping by PID.

Every server is started in its own session, so its process group id is its PID: stopping the group
ends what it forked (Ray's raylet and workers, uvicorn's workers) and nothing of anyone else's.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Ports handed to servers that cannot take port 0 (`ray start`, PostgreSQL, the MLflow entrypoint). Picking a
# port the kernel chose (bind 0) and releasing it races: the kernel hands the same ephemeral port to the next
# outgoing connection. So ports come from below the kernel's ephemeral range (never auto-assigned) and above
# Ray's default worker ports (10002-19999), and each is claimed by an flock held until this process exits, so
# concurrent test sessions on the machine never take the same one.
PORT_RANGE = (20000, 32767)
_LOCKS = Path(tempfile.gettempdir()) / "dyrank-test-ports"
_held: dict[int, int] = {}  # port -> fd of its lock file, kept open for the life of the process


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int) -> bool:
    """Whether nothing listens on (or holds) this loopback port right now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int) -> list[int]:
    """n loopback ports no one else holds, reserved for this process (see PORT_RANGE)."""
    _LOCKS.mkdir(mode=0o1777, exist_ok=True)
    low, high = PORT_RANGE[0], min(PORT_RANGE[1], _ephemeral_low() - 1)
    ports: list[int] = []
    for port in random.sample(range(low, high + 1), high + 1 - low):
        if len(ports) == n:
            break
        if port in _held:
            continue
        fd = os.open(_LOCKS / str(port), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another session's: skip it
        except OSError:
            os.close(fd)
            continue
        if not port_free(port):  # held by something outside the tests
            os.close(fd)
            continue
        _held[port] = fd
        ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"only {len(ports)} of {n} free ports in {low}-{high}")
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
