"""The P3 and G2 benchmarks' --smoke modes run end to end on the tiny preset and measure what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *extra: str) -> dict:
    subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke", *extra, "--out", str(out)], check=True,
                   cwd=REPO, timeout=600)
    return json.loads(out.read_text())


def test_p3_smoke_scores_the_same_losses_in_every_arm(tmp_path):
    result = _run("p3_eval_arms.py", tmp_path / "p3.json")
    assert result["smoke"] is True and result["ranks"] == [1, 2, 4, 8]
    assert set(result["seconds"]) == {"ours", "naive", "savvy", "floor"}
    for ratio in ("ratio_ours_over_naive", "ratio_ours_over_savvy", "ratio_ours_scoring_over_floor"):
        assert result[ratio] > 0, ratio
    # the same adapter at the same rank: dyrank's path (dequantized base, completion-only) and the user's agree
    assert max(result["max_relative_loss_difference"].values()) < 1e-3
    # each arm scores the rank it names: its loss at rank r is nearest the naive export's at r, of all ranks
    naive = result["losses"]["naive"]
    for arm in ("ours", "savvy"):
        for rank, loss in result["losses"][arm].items():
            assert min(naive, key=lambda r: abs(naive[r] - loss)) == rank, (arm, rank)
