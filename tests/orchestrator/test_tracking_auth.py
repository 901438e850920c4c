"""A real `mlflow server` with basic auth (tests/support/mlflow_server.py): a run with no login or a wrong
password is refused in one line naming the server, before any actor starts; /health alone (open to anyone)
would let both through to fail later, inside an actor."""

from __future__ import annotations

import pytest
import ray

from orchestrator.cli import main
from orchestrator.errors import TrackingError
from orchestrator.tracking import check_reachable
from tests.conftest import TINY_YAML
from tests.support.mlflow_server import MlflowServer
from tests.support.postgres import Postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    postgres = Postgres()
    server = None
    try:
        server = MlflowServer(postgres, tmp_path_factory.mktemp("mlflow-auth"))
        server.wait_ready()
        yield server
    finally:
        if server is not None:
            server.stop()
        postgres.stop()


@pytest.fixture
def login(auth_server, monkeypatch):
    """Sets the driver's environment: the server's URI and the given login (None: no login at all)."""
    def use(user: str | None, password: str | None) -> None:
        for key in CREDENTIALS:
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.uri)
        if user is not None:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return use


def _refused_run(capsys) -> str:
    ray.shutdown()  # whatever an earlier test left: the check below is about this run alone
    assert main(["run", str(TINY_YAML)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized(), "an actor-side resource was started before the login was checked"
    return err


def test_the_right_login_passes_the_check(auth_server, login):
    login(auth_server.user, auth_server.user_password)
    check_reachable(auth_server.uri)  # the control: the refusals below are about the login, not the server


def test_anonymous_requests_are_refused_in_one_line(auth_server, login, capsys):
    login(None, None)
    err = _refused_run(capsys)
    assert auth_server.uri in err and "refused anonymous requests (HTTP 401)" in err and "MLFLOW_TRACKING_USERNAME" in err


def test_a_wrong_password_is_refused_in_one_line_without_echoing_it(auth_server, login, capsys):
    login(auth_server.user, "wrong-" + auth_server.user_password)
    err = _refused_run(capsys)
    assert f"refused user '{auth_server.user}' (HTTP 401)" in err and auth_server.user_password not in err
    with pytest.raises(TrackingError, match="refused user"):
        check_reachable(auth_server.uri)
