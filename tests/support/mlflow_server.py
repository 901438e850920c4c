"""A real `mlflow server` on 127.0.0.1 for a test: PostgreSQL backend, proxied artifacts, basic auth,
started through clusters/mlflow/entrypoint.sh (the deployment's own start script). It can be stopped and
started again on the same port, as a server restart looks to clients."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from tests.conftest import REPO
from tests.support.postgres import Postgres
from tests.support.processes import free_ports, stop_group, wait_http

ENTRYPOINT = REPO / "clusters" / "mlflow" / "entrypoint.sh"


class MlflowServer:
    def __init__(self, postgres: Postgres, folder: Path):
        self.folder = folder
        self.username, self.password = "admin", uuid.uuid4().hex  # the admin only creates the user below
        (self.port,) = free_ports(1)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TMPDIR": str(folder),
            "MLFLOW_BACKEND_STORE_URI": postgres.create_database("mlflow", "mlflow", uuid.uuid4().hex),
            "MLFLOW_AUTH_DATABASE_URI": postgres.create_database("mlflow_auth", "mlflow_auth", uuid.uuid4().hex),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex, "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "artifacts"),
            "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(self.port), "MLFLOW_WORKERS": "1",
        }
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            self.env.pop(key, None)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.user, self.user_password = "dyrank", uuid.uuid4().hex  # created by wait_ready, as the README says
        self.launch()

    @property
    def client_env(self) -> dict[str, str]:
        """What the dyrank driver needs: the URI and the credentials of a plain (non-admin) user."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": self.user,
                "MLFLOW_TRACKING_PASSWORD": self.user_password}

    def launch(self) -> None:
        """Start the server without waiting for it (other set-up can go on meanwhile)."""
        self.starts += 1
        with open(self.folder / f"server-{self.starts}.log", "w") as log:
            self.proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        try:
            wait_http(f"{self.uri}/health", self.proc, "mlflow server", timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{(self.folder / f'server-{self.starts}.log').read_text()[-3000:]}") from None
        if self.starts == 1:
            reply = requests.post(f"{self.uri}/api/2.0/mlflow/users/create", auth=(self.username, self.password),
                                  json={"username": self.user, "password": self.user_password}, timeout=60)
            reply.raise_for_status()

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
