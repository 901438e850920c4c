"""`dyrank ui`: the MLflow UI and optuna-dashboard on 127.0.0.1 against the project's stores.

Both are child processes in their own process groups (each server forks workers); `stop()` ends the
groups, so Ctrl-C leaves nothing listening. A server that does not come up is an error naming its log.
The store URIs reach the servers through their environment, never their command line: any local user can
read a process's arguments (`ps`), only its owner its environment, and a URI may carry a password.
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


# optuna-dashboard takes its storage only as an argument: start it from Python with the storage from the env.
_OPTUNA_LAUNCHER = ("import os, sys, optuna_dashboard; "
                    "optuna_dashboard.run_server(os.environ.pop('DYRANK_UI_STORAGE'), host=sys.argv[1], port=int(sys.argv[2]))")


def server_commands(tracking_uri: str, storage: str, mlflow_port: int, optuna_port: int) -> list[tuple]:
    """(name, argv, extra environment, url, ready path) of each server: the URIs in the environment only."""
    optuna_storage = storage.removeprefix("journal:")  # optuna-dashboard reads a journal file by its path
    return [
        ("mlflow", [_bin("mlflow"), "server", "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
         {"MLFLOW_BACKEND_STORE_URI": tracking_uri}, f"http://{HOST}:{mlflow_port}", "/health"),
        ("optuna-dashboard", [sys.executable, "-c", _OPTUNA_LAUNCHER, HOST, str(optuna_port)],
         {"DYRANK_UI_STORAGE": optuna_storage}, f"http://{HOST}:{optuna_port}", "/api/studies"),
    ]


def _start(name: str, command: list[str], env: dict, url: str, log_dir: Path) -> Server:
    log = log_dir / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **env})
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
    commands = server_commands(tracking_uri, storage, free_port(mlflow_port), free_port(optuna_port))
    servers = Servers()
    try:
        for name, argv, env, url, _ in commands:
            servers.servers.append(_start(name, argv, env, url, log_dir))
        for server, (*_, ready_path) in zip(servers.servers, commands):
            _wait_ready(server, ready_path, timeout)
    except BaseException:
        servers.stop()
        raise
    return servers
