"""A pipeline run's part of a report, read back from MLflow: per-rank curves with the QLoRA baselines and
the selected rank, device-seconds per method, and training curves. Each figure is a Plotly plot for the
HTML page and a PNG (matplotlib) for a README."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from dashboards.fidelity_table import HEADER, delta_rows, fidelity_rows
from dashboards.html import Page
from dashboards.summary import plot_ranks
from trainers.methods import display_name
from orchestrator.fidelity_stage import FIDELITY_ARTIFACT, GRID_TAG
from orchestrator.tags import KIND_TAG

if TYPE_CHECKING:
    from orchestrator.tracking import Tracker

RANK_METRICS = ("eval_loss", "eval_perplexity", "eval_exact_match")


@dataclass
class PipelineData:
    run: object
    metric: str
    method: str  # the main training's method
    ranks: list[dict]
    baselines: list[dict]
    zeroshot: dict
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # label -> (step, train_loss)
    costs: dict[str, float] = field(default_factory=dict)  # label -> device-seconds
    fidelity: dict | None = None  # the parent's fidelity/fidelity.json, when the pipeline had a QLoRA grid

    @property
    def selected(self) -> int:
        return int(self.run.data.metrics["best_rank"])


def load_pipeline(tracker: Tracker, run_id: str) -> PipelineData:
    run = tracker.run(run_id)
    children = [c for c in tracker.children(run_id) if c.info.status == "FINISHED"]

    def rows(kind: str) -> list[dict]:
        found = [{"rank": int(c.data.params["rank"]), "method": c.data.params.get("method"), **c.data.metrics,
                  "_run": c.info.run_id} for c in children if c.data.tags.get(KIND_TAG) == kind]
        return sorted(found, key=lambda r: r["rank"])

    zeroshot = next((dict(c.data.metrics) for c in children if c.data.tags.get(KIND_TAG) == "zeroshot"), {})
    method = run.data.params.get("adapter.method", "qdylora")
    data = PipelineData(run, run.data.params.get("selection.metric", "eval_loss"), method, rows("eval"),
                        rows("baseline"), zeroshot)
    for kind in ("train", "baseline"):
        for c in (c for c in children if c.data.tags.get(KIND_TAG) == kind):
            name = method if kind == "train" else f"{c.data.params['method']} r={c.data.params['rank']}"
            history = tracker.metric_history(c.info.run_id, "train_loss")
            data.curves[name] = sorted((m.step, m.value) for m in history)
            data.costs[f"{name} train" if kind == "train" else f"{name} train+eval"] = c.data.metrics.get("device_seconds", 0.0)
    data.costs[f"{method} rank sweep ({len(data.ranks)} ranks)"] = run.data.metrics.get("eval_device_seconds", 0.0)
    if run.data.tags.get(GRID_TAG):
        with tempfile.TemporaryDirectory() as folder:
            data.fidelity = json.loads(Path(tracker.download(run_id, FIDELITY_ARTIFACT, folder)).read_text())
    return data


def _rank_figure(d: PipelineData) -> go.Figure:
    metrics = [m for m in RANK_METRICS if d.ranks and m in d.ranks[0]]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[f"{m} (validation)" for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        x = [r["rank"] for r in d.ranks]
        fig.add_trace(go.Scatter(x=x, y=[r[metric] for r in d.ranks], mode="lines+markers", name=f"{display_name(d.method)} (one adapter)",
                                 legendgroup="q", showlegend=col == 1, line={"color": "#1f77b4"}), row=1, col=col)
        chosen = [r for r in d.ranks if r["rank"] == d.selected]
        fig.add_trace(go.Scatter(x=[d.selected], y=[chosen[0][metric]] if chosen else [], mode="markers",
                                 marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": "red", "width": 2}},
                                 name=f"selected rank {d.selected}", legendgroup="s", showlegend=col == 1), row=1, col=col)
        for i, base in enumerate(d.baselines):
            if metric in base:
                fig.add_trace(go.Scatter(x=[min(x), max(x)], y=[base[metric]] * 2, mode="lines", line={"dash": "dash"},
                                         name=f"{display_name(base['method'])} r={base['rank']}", legendgroup=f"b{i}",
                                         showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="rank", row=1, col=col)
    fig.update_layout(title="Every rank from one training run, baselines dashed", margin={"t": 70})
    return fig


def _cost_figure(d: PipelineData) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(d.costs), y=list(d.costs.values()), text=[f"{v:.1f}" for v in d.costs.values()]))
    fig.update_layout(title="Cost: device-seconds per method", yaxis_title="device-seconds")
    return fig


def _training_figure(d: PipelineData) -> go.Figure:
    fig = go.Figure([go.Scatter(x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines", name=name)
                     for name, pts in d.curves.items()])
    fig.update_layout(title="Training loss per step (QDyLoRA: a sampled rank per step)", xaxis_title="step", yaxis_title="train loss")
    return fig


def _png_bars(costs: dict[str, float], path: Path) -> Path:
    fig = Figure(figsize=(7, 3.5), dpi=120)
    ax = fig.subplots()
    ax.barh(list(costs), list(costs.values()), color="C0")
    ax.set_xlabel("device-seconds")
    ax.set_title("Cost per method")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _png_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    fig = Figure(figsize=(7, 3.5), dpi=120)
    ax = fig.subplots()
    for name, pts in curves.items():
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title("Training curves")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def add_pipeline_section(page: Page, d: PipelineData, png_dir: Path, title: str) -> list[Path]:
    """The pipeline's figures on the page; returns the PNGs written to png_dir."""
    png_dir.mkdir(parents=True, exist_ok=True)
    page.heading(title)
    m = d.run.data.metrics
    page.note(f"MLflow run {d.run.info.run_id} ({d.run.info.status}); selected rank {d.selected} on validation {d.metric}")
    header = ["method", "rank", *[k for k in RANK_METRICS if d.ranks and k in d.ranks[0]]]
    rows = [[d.method + (" *" if r["rank"] == d.selected else ""), r["rank"], *[r.get(k, "") for k in header[2:]]]
            for r in d.ranks]
    rows += [[b["method"], b["rank"], *[b.get(k, "") for k in header[2:]]] for b in d.baselines]
    page.table(header, rows)
    if d.zeroshot:
        page.note(f"base model (zero-shot) {d.metric}: {d.zeroshot.get(d.metric, float('nan')):.4g}")
    pngs = []
    if d.ranks:
        page.plotly(_rank_figure(d))
        zeroshot = {k: v for k, v in d.zeroshot.items()}
        pngs.append(plot_ranks(d.ranks, d.baselines, d.selected, png_dir / "rank_vs_metric.png", d.metric, zeroshot,
                               d.method))
    page.plotly(_cost_figure(d))
    pngs.append(_png_bars(d.costs, png_dir / "cost.png"))
    if d.curves:
        page.plotly(_training_figure(d))
        pngs.append(_png_curves(d.curves, png_dir / "training.png"))
    if "selected_test_loss" in m:
        page.note(f"selected rank on test: loss {m['selected_test_loss']:.4g}")
    if "selection_not_worse_upper" in m:  # smallest-not-worse: the interval the choice rests on
        page.note(f"smallest-not-worse: rank {d.selected} minus best rank {int(m['selection_not_worse_reference_rank'])} "
                  f"on validation {m['selection_not_worse_diff']:+.4f} [{m['selection_not_worse_low']:+.4f}, "
                  f"{m['selection_not_worse_high']:+.4f}], one-sided bound {m['selection_not_worse_upper']:+.4f} <= "
                  f"margin {m['selection_not_worse_margin']:.4f}")
    if d.fidelity:
        page.heading("Fidelity: does the one run pick the rank the QLoRA search would?")
        page.note(f"grid G = {d.fidelity['grid']}; test loss, method - QLoRA, paired bootstrap 95% intervals; "
                  "both sides selected on validation by the same policy")
        page.table(HEADER, fidelity_rows(d.fidelity))
        page.table(["method", "rank", "method - QLoRA on test [95%]"], delta_rows(d.fidelity))
    for path in pngs:
        page.png(path, path.stem)
    return pngs
