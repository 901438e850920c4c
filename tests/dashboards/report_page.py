"""A written report page read back for the tests: its headings, notes, tables and Plotly figures, in page order.

The page is static HTML (dashboards/html.py) plus one `Plotly.newPlot(id, data, layout, ...)` call per figure, so
tables come from the markup and each figure's traces and layout from the JSON in that call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


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
