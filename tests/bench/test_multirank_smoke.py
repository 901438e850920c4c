"""bench/multirank_eval.py --smoke runs end to end on the tiny preset and measures what it says: every group
size scores the same losses as one rank per forward, and the ranks are different models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_multirank_smoke_writes_agreeing_losses_for_every_group_size(tmp_path):
    out = tmp_path / "multirank.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "multirank_eval.py"), "--smoke", "--group-sizes", "1,3,8",
                    "--out", str(out)], check=True, cwd=REPO, timeout=300)
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["ranks"] == [1, 2, 4, 8]
    assert set(result["ratio_over_one_rank_per_forward"]) == {"1", "3", "8"}
    assert all(ratio > 0 for ratio in result["ratio_over_one_rank_per_forward"].values())
    assert max(result["max_relative_loss_difference"].values()) < 1e-3
    reference = result["losses"]["1"]
    assert len({round(loss, 6) for loss in reference.values()}) == len(reference)  # four different models
