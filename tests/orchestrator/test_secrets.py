"""Credentials in store URIs never reach MLflow, Optuna, printed lines, errors or command lines; `dyrank resume`
refuses a config read back from the store that would run code or write outside its folder."""

from __future__ import annotations

import base64
import http.server
import threading

import optuna
import pytest

from trainers.config_base import ConfigError
import yaml

from orchestrator.cli import main
from orchestrator.errors import PipelineError, TrackingError
from orchestrator.redact import redact
from orchestrator.resume_checks import check_resumed_config
from orchestrator.study_storage import record_study_attrs
from orchestrator.tags import FAILURE_TAG
from orchestrator.tracking import MlflowTracker, check_reachable
from tests.conftest import TINY_YAML, tiny_config

SECRET = "s3cret-Pw"
DB = f"postgresql://alice:{SECRET}@127.0.0.1:1/mlflow"  # port 1: nothing listens


def test_redaction_masks_only_the_password():
    assert redact(f"MLflow at {DB} is down") == "MLflow at postgresql://alice:***@127.0.0.1:1/mlflow is down"
    assert redact(f"mysql+pymysql://bob:p@ss:w@db/x") == "mysql+pymysql://bob:***@db/x"
    for plain in ("http://127.0.0.1:5000/x", "sqlite:////tmp/mlflow.db", "http://alice@host/x", "journal:/tmp/j.log"):
        assert redact(plain) == plain


def test_mlflow_params_tags_artifacts_and_failures_hold_no_password(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = tracker.experiment_id("secrets")
    cfg = tiny_config(f"tracking.uri={DB}")
    run_id = tracker.create_run(experiment, "pipeline", "p", params=cfg.model_dump(mode="json"),
                                tags={"storage": f"{DB}?x=1"})
    tracker.log_text(run_id, cfg.to_yaml(), "config.yaml")
    tracker.log_dict(run_id, {"stores": [DB]}, "stores.json")
    tracker.fail(run_id, f"TrackingError: MLflow at {DB} unreachable")
    run = tracker.run(run_id)
    recorded = [*run.data.params.values(), *run.data.tags.values(),
                (tracker.download(run_id, "config.yaml", tmp_path / "a")).read_text(),
                (tracker.download(run_id, "stores.json", tmp_path / "b")).read_text()]
    assert not any(SECRET in text for text in recorded)
    assert run.data.params["tracking.uri"] == "postgresql://alice:***@127.0.0.1:1/mlflow"
    assert "alice:***@" in run.data.tags[FAILURE_TAG]


def test_optuna_study_attributes_hold_no_password():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    record_study_attrs(study, ["eval_loss"], DB)
    assert study.user_attrs["mlflow_tracking_uri"] == "postgresql://alice:***@127.0.0.1:1/mlflow"
    assert SECRET not in repr(study.user_attrs)


def test_printed_config_and_error_lines_hold_no_password(capsys):
    assert main(["check", str(TINY_YAML), "--set", f"tracking.uri={DB}"]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "alice:***@" in out.out
    assert main(["run", str(TINY_YAML), "--set", f"tracking.uri={DB}"]) == 2  # unreachable: before any actor
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err and "alice:***@" in err and SECRET not in err


def test_ui_passes_store_uris_by_environment_not_argv():
    from dashboards.ui import server_commands

    commands = server_commands(DB, f"postgresql://carol:{SECRET}@db/optuna", 5000, 8080)
    for name, argv, env, url, _ in commands:
        assert not any(SECRET in arg for arg in argv), name
        assert any(SECRET in value for value in env.values()), name
        assert url.startswith("http://127.0.0.1:")


class _BasicAuthHealth(http.server.BaseHTTPRequestHandler):
    """/health and the login check's read-only API call, each answered only with alice's header."""
    want = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    def do_GET(self):  # noqa: N802 - http.server's name
        known = self.path == "/health" or self.path.startswith("/api/2.0/mlflow/experiments/search")
        ok = known and self.headers.get("Authorization") == self.want
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_reachability_check_sends_uri_credentials_as_basic_auth():
    server = http.server.HTTPServer(("127.0.0.1", 0), _BasicAuthHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        check_reachable(f"http://alice:{SECRET}@127.0.0.1:{port}")  # answers 200 only with the right header
        with pytest.raises(TrackingError) as refused:
            check_reachable(f"http://alice:wrong-{SECRET}@127.0.0.1:{port}")
        assert SECRET not in str(refused.value) and "alice:***@" in str(refused.value)
    finally:
        server.shutdown()


def test_resume_refuses_remote_code_unless_allowed_again_and_path_like_names():
    trusting = tiny_config("model.trust_remote_code=true")
    with pytest.raises(PipelineError, match="model.trust_remote_code is true.*--allow-remote-code"):
        check_resumed_config(trusting, "r1")
    check_resumed_config(trusting, "r1", allow_remote_code=True)
    with pytest.raises(ConfigError, match=r"baselines.methods.0.name: must be a plain name.*'../../x'"):
        tiny_config("baselines.ranks=[]", 'baselines.methods=[{"method": "qlora", "rank": 2, "name": "../../x"}]')
    check_resumed_config(tiny_config(), "r1")


def test_dyrank_resume_refuses_a_stored_config_with_remote_code(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri)
    run_id = tracker.create_run(tracker.experiment_id("tiny"), "pipeline", "tiny")
    raw = yaml.safe_load(tiny_config().to_yaml())
    raw["model"]["trust_remote_code"] = True  # written into the store by someone else
    tracker.log_text(run_id, yaml.safe_dump(raw), "config.yaml")
    tracker.terminate(run_id, "KILLED")
    assert main(["resume", run_id, "--tracking-uri", uri]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dyrank ")]
    assert len(errors) == 1 and "model.trust_remote_code" in errors[0] and "--allow-remote-code" in errors[0]
    assert tracker.run(run_id).info.status == "KILLED", "refused before anything was reopened"
