"""`dyrank ui`: the MLflow UI and optuna-dashboard on 127.0.0.1 against the project's stores.

Both are child processes in their own process groups (each server forks workers); `stop()` ends the
groups, so Ctrl-C leaves nothing listening. A server that does not come up is an error naming its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UsageError

HOST = "127.0.0.1"  # never all interfaces: neither server authenticates anyone


def free_port(preferred: int | None = None) -> int:
    """The preferred port if nothing listens there, else one the OS hands out."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise UsageError("no free port on 127.0.0.1")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path


@dataclass
class Servers:
    servers: list[Server] = field(default_factory=list)

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGTERM)
        for server in self.servers:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait()

    def url(self, name: str) -> str:
        return next(s.url for s in self.servers if s.name == name)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))  # the venv's own entry points, not whatever PATH finds


def _start(name: str, command: list[str], url: str, ready_path: str, log_dir: Path) -> Server:
    log = log_dir / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   stdin=subprocess.DEVNULL)
    return Server(name, url, process, log)


def _wait_ready(server: Server, ready_path: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.process.poll() is not None:
            raise UsageError(f"{server.name} exited with {server.process.returncode}; see {server.log}")
        try:
            urllib.request.urlopen(server.url + ready_path, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise UsageError(f"{server.name} did not answer at {server.url} within {timeout:.0f} s; see {server.log}")


def start_ui(tracking_uri: str, storage: str, mlflow_port: int | None = 5000, optuna_port: int | None = 8080,
             timeout: float = 120.0) -> Servers:
    """Start both servers and wait until they answer; on failure neither is left running."""
    log_dir = Path(tempfile.mkdtemp(prefix="dyrank-ui-"))
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no Optuna storage at {storage}; run a study first or pass --storage")
    optuna_storage = storage.removeprefix("journal:")  # optuna-dashboard reads a journal file by its path
    mlflow_port, optuna_port = free_port(mlflow_port), free_port(optuna_port)
    servers = Servers()
    try:
        servers.servers.append(_start("mlflow", [
            _bin("mlflow"), "server", "--backend-store-uri", tracking_uri, "--host", HOST, "--port", str(mlflow_port),
            "--workers", "1"], f"http://{HOST}:{mlflow_port}", "/health", log_dir))
        servers.servers.append(_start("optuna-dashboard", [
            _bin("optuna-dashboard"), optuna_storage, "--host", HOST, "--port", str(optuna_port)],
            f"http://{HOST}:{optuna_port}", "/api/studies", log_dir))
        for server, path in zip(servers.servers, ("/health", "/api/studies")):
            _wait_ready(server, path, timeout)
    except BaseException:
        servers.stop()
        raise
    return servers
