"""Every benchmark script runs end to end in its smoke mode (a tiny model built from a config, seconds), so a
rename in the library breaks this test instead of a figure in docs/benchmarks.md. Each runs as its users run it
(`python bench/NAME.py --smoke --out PATH`), in a fresh process with a time limit, writing its JSON to a temp path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "bench"
NOT_SCRIPTS = {"_common.py", "_eval_bench.py"}  # imported by the scripts, not run
# scripts whose smoke run lives in a test of its own, which checks what it measures (not only that it ran)
SMOKED_ELSEWHERE = {"multirank_eval.py": "test_multirank_smoke.py", "p3_eval_arms.py": "test_eval_bench_smoke.py",
                    "g2_user_rank.py": "g2_time_to_rank.py runs it, once per grid rank",
                    "autocast_quality.py": "test_autocast_quality_adds_bf16_seeds_to_a_recorded_run",
                    "fidelity.py": "test_fidelity_smoke_then_its_docs_tables"}
# script -> (extra arguments, keys its JSON must hold)
SMOKES = {
    "accuracy.py": ([], ["rows"]),
    "g1_trainer_peer.py": ([], ["arms", "checks", "raw_step_seconds"]),
    "g2_time_to_rank.py": (["--set", "adapter.r_max=2"], ["ratio", "every_rank_extrapolated", "user_grid"]),
    "dequantized_eval.py": ([], ["ratio_dequantized_over_nf4", "relative_loss_difference"]),
    "gpu.py": (["--steps", "2"], ["P1"]),
    "idle_tiny.py": ([], ["summary", "runs"]),
    "methods.py": ([], ["methods"]),
    "p2_search_cost.py": ([], ["P2a", "P2b", "raw_train_s"]),
    "p4_memory.py": ([], ["rows"]),
    "p5_fanout.py": ([], ["speedup", "efficiency"]),
    "tiny_pipeline_fanout.py": ([], ["summary", "sweep_speedup_2_over_1"]),
}
# other modes of a script, each its own smoke run: (script, extra arguments, keys its JSON must hold)
MODES = [("g1_trainer_peer.py", ["--peer", "sft"], ["arms", "checks"]),  # TRL's SFTTrainer as the peer
         ("g1_trainer_peer.py", ["--no-peer"], ["arms", "raw_step_seconds"])]  # P1 alone
# per script: on an idle 2-core machine each takes seconds to about two minutes (the ones that run a pipeline);
# the limit is for a loaded machine, where a pipeline's Ray start-up alone can take minutes
TIMEOUT_S = 900


def test_every_script_has_a_smoke_run():
    scripts = {p.name for p in BENCH.glob("*.py")} - NOT_SCRIPTS
    assert scripts - {"random_base.py"} == set(SMOKES) | set(SMOKED_ELSEWHERE), "a bench/ script without a smoke run"


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("script", sorted(SMOKES))
def test_smoke_run_writes_its_json(script, tmp_path):
    args, keys = SMOKES[script]
    out = tmp_path / "result.json"
    done = _run(script, ["--smoke", *args, "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert all(key in result for key in keys), sorted(result)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("script, args, keys", MODES, ids=[" ".join([s, *a]) for s, a, _ in MODES])
def test_other_modes_write_their_json(script, args, keys, tmp_path):
    out = tmp_path / "result.json"
    done = _run(script, ["--smoke", *args, "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert all(key in result for key in keys), sorted(result)
    assert result["script"].endswith(" ".join(args))  # the JSON says which mode measured it


@pytest.mark.slow
def test_autocast_quality_adds_bf16_seeds_to_a_recorded_run(tmp_path):
    out = tmp_path / "result.json"
    assert _run("autocast_quality.py", ["--smoke", "--out", str(out)], tmp_path).returncode == 0
    before = json.loads(out.read_text())
    done = _run("autocast_quality.py", ["--smoke", "--add-bf16", "2", "--add-upcast", "0", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    after = json.loads(out.read_text())
    assert after["runs"]["float32"] == before["runs"]["float32"]  # the recorded fp32 runs are unchanged
    assert after["bf16_seeds"] == [*before["bf16_seeds"], 2] and len(after["runs"]["bfloat16"]) == 3
    assert all(len(row["bf16"]) == 3 and len(row["bf16_upcast"]) == 1 for row in after["verdict"].values())
    # the third arm is the residual stream in fp32 (PEFT's upcast), the bf16 arm's stays in bf16
    assert [run["embedding_dtype"] for run in after["runs"]["bfloat16_upcast"]] == ["float32"]
    assert {run["embedding_dtype"] for run in after["runs"]["bfloat16"]} == {"bfloat16"}


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_fidelity_smoke_then_its_docs_tables(tmp_path):
    """The smoke run (a seed, then the frozen mode against it), then --table, which reads that JSON back."""
    out = tmp_path / "result.json"
    done = _run("fidelity.py", ["--smoke", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert {"seeds", "pooled", "update_mode"} <= set(result) and list(result["update_mode"]) == ["frozen-seed0"]
    done = _run("fidelity.py", ["--table", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    pooled_rows = [line for line in done.stdout.splitlines() if line.startswith("| pooled")]
    for method, row in result["pooled"]["methods"].items():  # each method's pooled regret, as the JSON holds it
        assert any(f"| {method} |" in line and f"{row['regret']['diff']:+.3f} ({row['regret']['low']:+.3f}" in line
                   for line in pooled_rows), (method, pooled_rows)
    frozen = result["update_mode"]["frozen-seed0"]["over_grid_minus_reference"]
    assert f"| over the grid | | | {frozen['diff']:+.3f}" in done.stdout


@pytest.mark.slow
def test_random_base_builds_a_loadable_folder(tmp_path):
    done = _run("random_base.py", ["tiny", str(tmp_path / "base")], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "base").hidden_size == 64


def test_a_smoke_run_refuses_to_write_into_bench_results(tmp_path):
    done = _run("p2_search_cost.py", ["--smoke", "--out", str(BENCH / "results" / "p2_search_cost.json")], tmp_path)
    assert done.returncode == 2 and "bench/results" in done.stderr
