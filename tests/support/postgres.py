"""A private PostgreSQL cluster for a test: its own data folder, port and socket, from Debian's packages
(`.ci/run` installs them). PostgreSQL refuses to run as root, so as root it runs as the `postgres` user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil

from tests.support.processes import free_ports


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                           "apt-get install -y postgresql (.ci/run does)")
    return Path(found[-1]).parent


class Postgres:
    def __init__(self):
        self.bin = _bin_dir()
        # Not under pytest's tmp_path: that is root-only (0700) and the server runs as `postgres`.
        self.folder = Path(tempfile.mkdtemp(prefix="dyrank-pg-"))
        self.data = self.folder / "data"
        self.as_root = os.geteuid() == 0
        self.superuser = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        (self.port,) = free_ports(1)
        # The superuser only over the unix socket, as its own OS user (peer); over TCP, passwords only.
        self._run("initdb", "-D", str(self.data), "-U", self.superuser, "--auth-local=peer",
                  "--auth-host=scram-sha-256", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def _run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.folder)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stderr[-2000:]}")
        return out.stdout

    def create_database(self, name: str, user: str, password: str) -> str:
        """A database owned by a password user; its SQLAlchemy URI over TCP on loopback."""
        psql = ["psql", "-h", str(self.folder), "-p", str(self.port), "-U", self.superuser, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-c"]
        self._run(*psql, f"CREATE USER {user} WITH PASSWORD '{password}'")
        self._run(*psql, f"CREATE DATABASE {name} OWNER {user}")
        return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster by its PID; it ends its own backends."""
        try:
            server = psutil.Process(self.pid)
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)  # pg_ctl daemonized it: not our child, psutil polls
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            server.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
