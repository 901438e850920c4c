"""The summary a pipeline prints and saves (report/summary.txt): parsed back, each value where it belongs."""

from __future__ import annotations

import math

import pytest

from dashboards.summary import cost_table, summary_table

RANKS = [{"rank": r, "eval_loss": loss, "eval_perplexity": math.exp(loss), "eval_exact_match": em}
         for r, loss, em in [(4, 1.2345, 0.5), (1, 2.5, 0.125), (2, 1.75, 0.25), (8, 1.3, 0.375)]]
BASELINES = [{"method": "qlora", "rank": 8, "eval_loss": 1.28, "eval_perplexity": math.exp(1.28), "eval_exact_match": 0.4},
             {"method": "lora", "rank": 2, "eval_loss": 1.5, "eval_perplexity": math.exp(1.5)}]


def test_summary_table_lists_every_rank_in_order_marks_the_selected_one_and_puts_baselines_below():
    lines = summary_table(RANKS, BASELINES, selected_rank=4, method="qdylora").splitlines()
    assert lines[0].split() == ["method", "rank", "eval_loss", "perplexity", "exact_match"]
    separators = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    assert separators == [1, 6]
    marks, rows = [line[:2].strip() for line in lines[2:6]], [line[2:].split() for line in lines[2:6]]
    assert [int(r[1]) for r in rows] == [1, 2, 4, 8] and {r[0] for r in rows} == {"qdylora"}
    assert marks == ["", "", "*", ""]
    for row, want in zip(rows, sorted(RANKS, key=lambda r: r["rank"])):
        assert float(row[2]) == pytest.approx(want["eval_loss"], abs=5e-5)
        assert float(row[3]) == pytest.approx(want["eval_perplexity"], abs=5e-4)
        assert float(row[4]) == pytest.approx(want["eval_exact_match"], abs=5e-4)
    base = [line.split() for line in lines[7:9]]
    assert [(b[0], int(b[1])) for b in base] == [("lora", 2), ("qlora", 8)]  # by method, then rank
    assert float(base[1][2]) == pytest.approx(1.28, abs=5e-5) and base[0][4] == "nan"  # no task metric recorded
    assert lines[-1] == "* selected rank 4 (on validation eval_loss)"


def test_cost_table_converts_bytes_to_kib_and_mib():
    job = {"method": "qdylora", "rank": 8, "trainable_params": 16384, "adapter_bytes": 70656,
           "peak_memory_bytes": 3 * 2**20 + 2**19, "step_seconds": 0.125, "device_seconds": 12.25}
    header, _, line = cost_table([job]).splitlines()
    assert header.split() == ["method", "rank", "trainable", "saved", "KiB", "peak", "MiB", "s/step", "train", "s"]
    assert line.split() == ["qdylora", "8", "16384", "69.0", "3.5", "0.125", "12.2"]
