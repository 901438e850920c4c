"""A written report page read back for the tests: its headings, notes, tables and Plotly figures, in page order,
and a pipeline's part of it compared with what MLflow recorded.

The page is static HTML (dashboards/html.py) plus one `Plotly.newPlot(id, data, layout, ...)` call per figure, so
tables come from the markup and each figure's traces and layout from the JSON in that call.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


@dataclass
class ReportPage:
    headings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)  # each: header row, then body rows, cell texts
    figures: list[tuple[list[dict], dict]] = field(default_factory=list)  # (traces, layout)

    def figure(self, title: str) -> list[dict]:
        """The traces of the one figure whose layout title is `title`."""
        [traces] = [traces for traces, layout in self.figures if layout.get("title", {}).get("text") == title]
        return traces


class _Reader(HTMLParser):
    def __init__(self, page: ReportPage):
        super().__init__()
        self.page, self.text, self.into = page, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2" or (tag == "p" and ("class", "note") in attrs) or tag in ("td", "th"):
            self.text, self.into = [], tag
        elif tag == "table":
            self.page.tables.append([])
        elif tag == "tr":
            self.page.tables[-1].append([])

    def handle_endtag(self, tag):
        if self.into != tag:
            return
        text = "".join(self.text)
        if tag == "h2":
            self.page.headings.append(text)
        elif tag == "p":
            self.page.notes.append(text)
        else:
            self.page.tables[-1][-1].append(text)
        self.text = self.into = None

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)


def read_report(path: Path) -> ReportPage:
    text = Path(path).read_text(encoding="utf-8")
    page = ReportPage()
    body = text[text.index("<body"):]
    _Reader(page).feed(re.sub(r"<script.*?</script>", "", body, flags=re.S))
    decoder = json.JSONDecoder()
    for call in re.finditer(r"Plotly\.newPlot\(\s*", body):
        _, end = decoder.raw_decode(body, call.end())  # the div id
        traces, end = decoder.raw_decode(body, re.compile(r"\s*,\s*").match(body, end).end())
        layout, _ = decoder.raw_decode(body, re.compile(r"\s*,\s*").match(body, end).end())
        page.figures.append((traces, layout))
    return page


def assert_pipeline_section_is_the_mlflow_record(page: ReportPage, table: list[list[str]], client: MlflowClient,
                                                run_id: str) -> None:
    """The pipeline's rank table, its notes, cost bars and training curve show what MLflow recorded for `run_id`
    (read here with MlflowClient); the starred rank is the lowest recorded validation loss, found here."""
    parent = client.get_run(run_id)
    children = [c for c in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
                if c.info.status == "FINISHED"]
    by_kind = {kind: [c for c in children if c.data.tags.get("dyrank.kind") == kind] for kind in ("eval", "baseline", "train", "zeroshot")}
    evals = sorted(by_kind["eval"], key=lambda c: int(c.data.params["rank"]))
    baselines = by_kind["baseline"]
    [train], [zeroshot] = by_kind["train"], by_kind["zeroshot"]
    assert parent.data.params["selection.policy"] == "best"  # lowest validation loss, ties to the smaller rank
    selected = min(evals, key=lambda c: (c.data.metrics["eval_loss"], int(c.data.params["rank"])))
    selected_rank = int(selected.data.params["rank"])

    header, *rows = table
    assert header == ["method", "rank", "eval_loss", "eval_perplexity", "eval_exact_match"]
    assert len(rows) == len(evals) + len(baselines)
    eval_rows, baseline_rows = rows[:len(evals)], rows[len(evals):]
    assert [int(r[1]) for r in eval_rows] == [int(c.data.params["rank"]) for c in evals]  # every rank, in order
    assert [r[0] for r in eval_rows] == ["qdylora *" if c is selected else "qdylora" for c in evals]
    assert [int(r[1]) for r in baseline_rows] == sorted(int(c.data.params["rank"]) for c in baselines)
    recorded = {("qdylora", int(c.data.params["rank"])): c.data.metrics for c in evals}
    recorded |= {(c.data.params["method"], int(c.data.params["rank"])): c.data.metrics for c in baselines}
    for row in rows:
        metrics = recorded[(row[0].removesuffix(" *"), int(row[1]))]
        assert row[2:] == [f"{metrics[name]:.4g}" for name in header[2:]], row
        assert float(row[3]) == pytest.approx(math.exp(float(row[2])), rel=2e-3), row  # perplexity = e^loss

    assert f"MLflow run {run_id} (FINISHED); selected rank {selected_rank} on validation eval_loss" in page.notes
    assert f"base model (zero-shot) eval_loss: {zeroshot.data.metrics['eval_loss']:.4g}" in page.notes
    costs = page.figure("Cost: device-seconds per method")[0]
    want = {"qdylora train": train.data.metrics["device_seconds"],
            f"qdylora rank sweep ({len(evals)} ranks)": parent.data.metrics["eval_device_seconds"]}
    want |= {f"{c.data.params['method']} r={c.data.params['rank']} train+eval": c.data.metrics["device_seconds"]
             for c in baselines}
    assert dict(zip(costs["x"], costs["y"])) == pytest.approx(want)
    [curve] = [t for t in page.figure("Training loss per step (QDyLoRA: a sampled rank per step)") if t["name"] == "qdylora"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(train.info.run_id, "train_loss"))
    assert list(zip(curve["x"], curve["y"])) == history
