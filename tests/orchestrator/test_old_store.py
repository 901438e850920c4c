"""A store recorded by the code at a83f95e (tests/fixtures/store-a83f95e: the tiny pipeline, finished) still works
with today's `dyrank report`, `dyrank export` and `dyrank resume`."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import ray
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from tests.conftest import FIXTURES
from tests.dashboards.report_page import assert_pipeline_section_is_the_mlflow_record, read_report

STORE = FIXTURES / "store-a83f95e"
RECORDED_AT = "/tmp/oldstore"  # where the fixture's artifacts lived when it was recorded


@pytest.fixture
def old_store(tmp_path, monkeypatch):
    """A copy of the fixture whose artifact locations point at the copy; its parent run id."""
    shutil.copytree(STORE, tmp_path / "store")
    db = tmp_path / "store" / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                     (RECORDED_AT, str(tmp_path / "store")))
        conn.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (RECORDED_AT, str(tmp_path / "store")))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    parent = json.loads((STORE / "record.json").read_text())["parent_run_id"]
    yield uri, parent
    ray.shutdown()


def test_report_of_an_old_pipeline(old_store, tmp_path, capsys):
    uri, parent = old_store
    assert main(["report", parent, "--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 0
    [html] = (tmp_path / "reports").glob("*.html")
    page = read_report(html)
    assert_pipeline_section_is_the_mlflow_record(page, page.tables[0], MlflowClient(uri), parent)


def test_export_from_an_old_pipeline(old_store, tmp_path):
    uri, parent = old_store
    assert main(["export", parent, "--rank", "3", "--out", str(tmp_path / "r3"), "--tracking-uri", uri]) == 0
    config = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["lora_alpha"] == 16
    assert config["base_model_name_or_path"] == "tiny-llama"  # its old cache path, made portable on export
    card = (tmp_path / "r3" / "README.md").read_text()
    assert "base_model: tiny-llama" in card and "| rank | 3 |" in card and "| train |" in card


@pytest.mark.slow
def test_resume_of_an_old_pipeline_redoes_only_unfinished_ranks(old_store, capsys):
    """The driver 'died' while recording ranks 7 and 8: their runs are RUNNING, as is the parent. Resume finishes
    exactly those, in the same runs, and the parent."""
    uri, parent = old_store
    client = MlflowClient(uri)
    experiment = client.get_run(parent).info.experiment_id

    def evals():
        return {int(r.data.params["rank"]): r for r in client.search_runs(
            [experiment], "tags.`dyrank.kind` = 'eval'", run_view_type=ViewType.ALL, max_results=1000)}

    before = evals()
    for rank in (7, 8):
        client.update_run(before[rank].info.run_id, status="RUNNING")
    client.update_run(parent, status="RUNNING")
    assert main(["resume", parent, "--tracking-uri", uri]) == 0
    after = evals()
    assert sorted(after) == list(range(1, 9)) and all(r.info.status == "FINISHED" for r in after.values())
    assert {r: run.info.run_id for r, run in after.items()} == {r: run.info.run_id for r, run in before.items()}
    assert after[1].info.end_time == before[1].info.end_time  # finished work is not redone
    assert client.get_run(parent).info.status == "FINISHED"
    assert "selected rank" in capsys.readouterr().out
