"""One self-contained HTML page: plotly.js inlined (no CDN), PNGs as data: URIs, no request leaves the file.

The page counts what actually rendered into `<body data-plots-rendered=N data-images-loaded=M>` once it
has loaded, so a headless browser's DOM dump shows whether the plots drew, not only that they were sent.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } .note { color: #666; font-size: 0.9rem; } img.png { max-width: 100%; }
.plot { height: 420px; }
"""

# Counts after load: a Plotly plot that drew has an <svg class="main-svg">; an image that decoded has a width.
_COUNT = """
window.addEventListener('load', function () {
  var plots = Array.from(document.querySelectorAll('.js-plotly-plot')).filter(function (d) { return d.querySelector('svg.main-svg'); });
  var images = Array.from(document.querySelectorAll('img.png')).filter(function (i) { return i.complete && i.naturalWidth > 0; });
  images.forEach(function (i) { i.setAttribute('data-loaded', 'true'); });
  document.body.setAttribute('data-plots-rendered', plots.length);
  document.body.setAttribute('data-images-loaded', images.length);
});
"""


class Page:
    def __init__(self, title: str):
        self.title, self.parts = title, []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, header: list[str], rows: list[list]) -> None:
        def cell(value) -> str:
            return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def plotly(self, figure) -> None:
        self.parts.append(figure.to_html(full_html=False, include_plotlyjs=False, default_height="420px",
                                         config={"displaylogo": False}))

    def png(self, path: Path, alt: str) -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.parts.append(f'<img class="png" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def write(self, path: Path) -> Path:
        from plotly.offline import get_plotlyjs

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script><script>{_COUNT}</script></head>"
            f"<body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>",
            encoding="utf-8",
        )
        return path
