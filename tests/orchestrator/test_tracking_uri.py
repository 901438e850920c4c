"""Tracking URIs are judged by their parsed scheme, once, for the config, the reachability check, the
buffered tracker and the Ray-job preflight."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import TrackingConfig
from orchestrator.errors import TrackingError
from orchestrator.tracking import check_reachable
from orchestrator.tracking_uri import (is_durable_in_ray_job, is_remote_http, parse_tracking_uri, resolve_tracking_uri,
                                       sqlite_path)

# uri, accepted, remote http, durable in a Ray job
CASES = [
    ("sqlite:///rel.db", True, False, False),
    ("sqlite:////abs/mlflow.db", True, False, True),
    ("sqlite:///mlflow.db?timeout=30", True, False, False),
    ("file:///tmp/mlruns", True, False, False),
    ("http://127.0.0.1:5000", True, True, True),
    ("https://mlflow.example.com/", True, True, True),
    ("HTTP://host:5000", True, True, True),  # schemes are case-insensitive
    ("postgresql://user:pw@db:5432/mlflow", True, False, False),
    ("postgresql+psycopg2://user@db/mlflow", True, False, False),
    ("mysql://user@db/mlflow", True, False, False),
    ("mysql+pymysql://user@db/mlflow", True, False, False),
    ("databricks", True, False, False),
    ("databricks://my-profile", True, False, False),
    ("postgresqlXYZ://db/mlflow", False, False, False),  # a prefix of a scheme is not the scheme
    ("mysqlx://db/mlflow", False, False, False),
    ("postgresql+://db/mlflow", False, False, False),  # an empty driver
    ("sqlite+pysqlite:///x.db", False, False, False),  # drivers only for the server databases
    ("http+unix://socket", False, False, False),
    ("sqlite://", False, False, False),  # in-memory: nothing would be kept
    ("sqlite://host/x.db", False, False, False),
    ("http://", False, False, False),  # no host
    ("http://[::1", False, False, False),  # malformed
    ("redis://localhost", False, False, False),
    ("./mlruns", False, False, False),
    ("databricks-uc", False, False, False),
    ("file:", False, False, False),
]


@pytest.mark.parametrize("uri,accepted,remote,durable", CASES)
def test_uris_are_judged_by_scheme(uri, accepted, remote, durable):
    if accepted:
        assert parse_tracking_uri(uri).scheme in uri.lower()
        assert TrackingConfig(uri=uri).uri == uri
    else:
        with pytest.raises(ValueError, match="unsupported tracking URI.*sqlite:///PATH"):
            parse_tracking_uri(uri)
        with pytest.raises(ValueError, match="unsupported tracking URI"):
            TrackingConfig(uri=uri)
    assert is_remote_http(uri) is remote
    assert is_durable_in_ray_job(uri) is durable


def test_a_driver_is_kept_apart_from_the_scheme():
    parsed = parse_tracking_uri("postgresql+psycopg2://user@db/mlflow")
    assert (parsed.scheme, parsed.driver, parsed.netloc) == ("postgresql", "psycopg2", "user@db")


def test_sqlite_paths_relative_and_absolute():
    assert sqlite_path("sqlite:///rel.db") == Path("rel.db")
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_path("http://host") is None


def test_a_relative_sqlite_uri_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///a.db?timeout=5") == f"sqlite:///{tmp_path}/a.db?timeout=5"
    assert resolve_tracking_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env/m.db")
    assert resolve_tracking_uri("http://h:5000") == "sqlite:////env/m.db"


def test_check_reachable_refuses_an_unsupported_scheme_and_a_missing_folder(tmp_path):
    with pytest.raises(TrackingError, match="unsupported tracking URI"):
        check_reachable("postgresqlXYZ://db/mlflow")
    with pytest.raises(TrackingError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/missing/mlflow.db")
    check_reachable(f"sqlite:///{tmp_path}/mlflow.db")
