"""`dyrank report`: one self-contained HTML file whose plots render in headless Chromium, and PNGs."""

from __future__ import annotations

import re

import optuna
import pytest

from orchestrator.cli import main
from tests.browser import dump_dom

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
    assert "Best trial" in dom and "QLoRA r=2" in dom and "selected rank" in dom
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
    assert f"MLflow run {run_id}" in dom and "device-seconds" in dom


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
    for i, (loss, seconds) in enumerate([(5.4, 9.0), (5.5, 4.0), (5.6, 3.0), (5.7, 8.0), (5.45, 5.0)]):
        study.add_trial(optuna.create_trial(params={"training.lr": 1e-4 * (i + 1)}, distributions={"training.lr": lr},
                                            values=[loss, seconds]))
    report = write_report("pareto", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=storage, out_dir=tmp_path / "reports")
    assert sorted(p.name for p in report.pngs) == sorted(["pareto_front.png", "history_best_eval_loss.png",
                                                         "history_device_seconds.png", "param_importances.png"])
    plots, images, dom = _rendered(report.html)
    assert plots == 4 and images == 4
    assert "pruners do not support multi-objective studies" in dom
