"""docs/benchmarks.md and bench/results/ stay in step: every table row names the JSON it came from (or says the
run's JSON was not kept), and every JSON a row names is there and was written by the script the row names."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
ROW = re.compile(r"^\| `bench/(?P<script>[\w.]+)[^|]*?(?:→ (?P<target>[^|]*))?\|")


def _rows() -> list[re.Match]:
    return [m for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def test_every_row_names_a_kept_json_written_by_its_script():
    rows = _rows()
    assert len(rows) > 20  # the pattern still matches the doc's rows
    for row in rows:
        target = row["target"] or ""
        named = re.findall(r"`bench/results/([\w.-]+\.json)`", target)
        assert named or "not kept" in target, row.group(0)
        for name in named:
            result = json.loads((REPO / "bench" / "results" / name).read_text())
            script = result.get("script", "")
            assert script.startswith("bench/") and script.split()[0].endswith(".py"), (name, script)
            assert Path(script.split()[0]).name == row["script"], (row.group(0), script)
