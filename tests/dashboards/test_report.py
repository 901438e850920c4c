"""`dyrank report`: one self-contained HTML file whose plots render in headless Chromium, and PNGs."""

from __future__ import annotations

import ast
import re
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from tests.browser import dump_dom
from tests.dashboards.report_page import assert_pipeline_section_is_the_mlflow_record, read_report

pytestmark = pytest.mark.slow


def _rendered(html_path) -> tuple[int, int, str]:
    dom = dump_dom(html_path.as_uri())
    plots = int(re.search(r'data-plots-rendered="(\d+)"', dom).group(1))
    images = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    return plots, images, dom


def _self_contained(text: str) -> None:
    assert not re.search(r'<(script|img|link)[^>]+(src|href)="(https?:)?//', text), "the report fetches from the network"


def test_study_report_renders_every_plot_in_chromium(tiny_study, monkeypatch, capsys):
    monkeypatch.chdir(tiny_study.folder)  # defaults: ./optuna.db, ./reports/, the study's own MLflow store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report", "study-tiny"]) == 0
    html_path = tiny_study.folder / "reports" / "study-tiny.html"
    assert f"report: {html_path}" in capsys.readouterr().out
    text = html_path.read_text()
    _self_contained(text)
    sent = text.count('class="plotly-graph-div"')
    plots, images, dom = _rendered(html_path)
    # history, importances, intermediate values; then the best trial's rank curves, cost, training curves
    assert plots == sent >= 6, (plots, sent)
    assert images == text.count('<img class="png"') == 6
    page = read_report(html_path)
    client = MlflowClient(tiny_study.tracking_uri)
    trials = optuna.load_study(study_name="study-tiny", storage=tiny_study.storage).get_trials()
    header, *rows = page.tables[0]
    assert header[:3] == ["trial", "state", "best_eval_loss"] and header[-1] == "pipeline run"
    assert [(int(r[0]), r[1]) for r in rows] == [(t.number, t.state.name) for t in trials]
    assert ast.literal_eval(page.notes[0].split("trials by state: ")[1].split("; ")[0]) == Counter(r[1] for r in rows)
    recorded = {}  # trial -> (the best_eval_loss its pipeline run recorded in MLflow, that run)
    for row in rows:
        if row[1] == "COMPLETE":
            run = client.get_run(row[-1])
            assert run.data.tags["dyrank.trial_number"] == row[0]
            assert row[2] == f"{run.data.metrics['best_eval_loss']:.4g}", row
            recorded[int(row[0])] = (run.data.metrics["best_eval_loss"], row[-1])
        elif row[1] == "PRUNED":  # Optuna's value for a pruned trial: the last value it reported to the pruner
            reported = trials[int(row[0])].intermediate_values
            assert row[2] == f"{reported[max(reported)]:.4g}", row
        else:
            assert row[2] == "", row  # a failed or still running trial has no value
    best = min(recorded, key=lambda number: recorded[number][0])  # direction minimize
    assert page.headings == ["Study study-tiny", f"Best trial {best}: its pipeline"]
    assert_pipeline_section_is_the_mlflow_record(page, page.tables[1], client, recorded[best][1])
    pngs = sorted(p.name for p in (tiny_study.folder / "reports" / "study-tiny").rglob("*.png"))
    assert pngs == sorted(["optimization_history.png", "param_importances.png", "intermediate_values.png",
                           "rank_vs_metric.png", "cost.png", "training.png"])


def test_pipeline_report_by_run_id(tiny_study, tmp_path, capsys):
    study = optuna.load_study(study_name="study-tiny", storage=tiny_study.storage)
    run_id = study.best_trial.user_attrs["mlflow_run_id"]
    assert main(["report", run_id, "--tracking-uri", tiny_study.tracking_uri, "--out", str(tmp_path)]) == 0
    [html_path] = tmp_path.glob("*.html")
    plots, images, dom = _rendered(html_path)
    assert plots == 3 and images == 3  # rank curves with baselines, cost per method, training curves
    page = read_report(html_path)
    assert len(page.tables) == 1 and page.headings == ["Pipeline"]
    assert_pipeline_section_is_the_mlflow_record(page, page.tables[0], MlflowClient(tiny_study.tracking_uri), run_id)


def test_unknown_target_is_one_line(tiny_study, tmp_path, capsys):
    assert main(["report", "no-such-study", "--storage", tiny_study.storage, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no study 'no-such-study'" in err and len(err.splitlines()) == 1


def test_multi_objective_study_report_draws_the_pareto_front(tmp_path):
    """A study recorded without pipelines (values only): the report shows its Pareto front and histories."""
    from dashboards.report import write_report

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="pareto", storage=storage, directions=["minimize", "minimize"])
    study.set_user_attr("objective_metrics", ["best_eval_loss", "device_seconds"])
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    points = [(5.4, 9.0), (5.5, 4.0), (5.6, 3.0), (5.7, 8.0), (5.45, 5.0)]
    for i, (loss, seconds) in enumerate(points):
        study.add_trial(optuna.create_trial(params={"training.lr": 1e-4 * (i + 1)}, distributions={"training.lr": lr},
                                            values=[loss, seconds]))
    report = write_report("pareto", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=storage, out_dir=tmp_path / "reports")
    assert sorted(p.name for p in report.pngs) == sorted(["pareto_front.png", "history_best_eval_loss.png",
                                                         "history_device_seconds.png", "param_importances.png"])
    plots, images, dom = _rendered(report.html)
    assert plots == 4 and images == 4
    assert "pruners do not support multi-objective studies" in dom
    page = read_report(report.html)
    header, *rows = page.tables[0]
    assert header == ["trial", "state", "best_eval_loss", "device_seconds", "training.lr", "pipeline run"]
    assert [(int(r[0]), float(r[2]), float(r[3])) for r in rows] == [(i, *p) for i, p in enumerate(points)]
    # the front drawn is the trials no other trial beats on both objectives, found here: all but (5.7, 8.0)
    front = {p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)}
    assert front == set(points) - {(5.7, 8.0)}
    # optuna names its two point sets in the hover label only: "<extra>Best Trial</extra>" and "<extra>Trial</extra>"
    drawn = {re.search(r"<extra>(.*)</extra>", t["hovertemplate"]).group(1): set(zip(t["x"], t["y"]))
             for t in page.figures[0][0] if t.get("x")}
    assert drawn == {"Best Trial": front, "Trial": {(5.7, 8.0)}}, drawn
