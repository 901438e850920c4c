"""G2: time to a selected rank. `dyrank run` (ranks 1, 2, 4, 8, 16, 32, 64, no baselines: Ray, actor start-up and
base loads included) against the grid a user scripts with transformers `Trainer` + PEFT QLoRA: one training per
rank, each in a fresh process (bench/g2_user_rank.py), each scored on the same validation examples, same steps,
batch and machine. A benchmark on the real model, not a test:

    python3 bench/g2_time_to_rank.py --out bench/results/g2_time_to_rank.json      # SmolLM2 + countries, 60 steps
    python3 bench/g2_time_to_rank.py --smoke --out /tmp/g2-smoke.json              # tiny preset, 5 steps, ranks 1..8

Ratio = dyrank's wall seconds / the grid's summed wall seconds (goal <= 0.14). The 64-rank figure is
extrapolated, and says so: the grid's 64 trainings from a least-squares line in rank through the measured ones,
dyrank's from its measured run plus the ranks it did not score at its median per-rank evaluation seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, parser, stamp, write_result
from _eval_bench import SMOKE_CONFIG

GRID = [1, 2, 4, 8, 16, 32, 64]
SMOKE_SET = ["training.max_steps=5", "evaluation.max_samples=16", "training.checkpoint_every=5"]


def _line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sum((x - mx) ** 2 for x in xs) or 1.0)
    return my - slope * mx, slope


def run_dyrank(config: str, overrides: list[str], ranks: list[int], folder: Path) -> dict:
    """`dyrank run` in a fresh process with its own tracking store; its wall seconds and what it recorded."""
    uri = f"sqlite:///{folder}/mlflow.db"
    sets = [*overrides, f"evaluation.ranks=[{','.join(map(str, ranks))}]", "baselines.ranks=[]", "baselines.methods=[]"]
    command = [sys.executable, "-m", "orchestrator.cli", "run", config, "--quiet", *(a for s in sets for a in ("--set", s))]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=folder, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                                          "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"})
    seconds = time.perf_counter() - started
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("dyrank.kind") == "pipeline")
    evals = {int(r.data.params["rank"]): r for r in runs if r.data.tags.get("dyrank.kind") == "eval"}
    return {"seconds": seconds, "selected_rank": int(parent.data.metrics["best_rank"]),
            "eval_loss": {r: run.data.metrics["eval_loss"] for r, run in sorted(evals.items())},
            "eval_seconds_per_rank": statistics.median(run.data.metrics["seconds"] for run in evals.values())}


def run_user_rank(config: str, overrides: list[str], rank: int) -> dict:
    command = [sys.executable, str(REPO / "bench" / "g2_user_rank.py"), "--config", config, "--rank", str(rank),
               *(a for s in overrides for a in ("--set", s))]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {**row, "process_seconds": time.perf_counter() - started}


def main() -> None:
    arguments = parser()
    arguments.add_argument("--config", default=str(REPO / "examples" / "smollm2-countries.yaml"))
    arguments.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    arguments.add_argument("--smoke", action="store_true", help="examples/tiny.yaml, 5 steps, ranks 1..8")
    args = arguments.parse_args()
    config, overrides = (str(SMOKE_CONFIG), SMOKE_SET + args.set) if args.smoke else (args.config, args.set)
    from trainers.config import load_job_config  # the config's r_max bounds the grid

    r_max = load_job_config(config, overrides, ignore_sections=("selection", "baselines", "tracking", "resources")).adapter.r_max
    grid = [r for r in GRID if r <= r_max]
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_dyrank(config, overrides, grid, Path(tmp))
    user = [run_user_rank(config, overrides, r) for r in grid]
    user_seconds = sum(row["process_seconds"] for row in user)
    best_user = min(user, key=lambda row: row["eval_loss"])
    intercept, slope = _line_fit(grid, [row["process_seconds"] for row in user])
    all_ranks = list(range(1, r_max + 1))
    user_all = sum(intercept + slope * r for r in all_ranks)
    ours_all = ours["seconds"] + (len(all_ranks) - len(grid)) * ours["eval_seconds_per_rank"]
    result = stamp("bench/g2_time_to_rank.py", "torch", "transformers", "peft", "bitsandbytes", "ray", "mlflow",
                   config=config, overrides=overrides, smoke=args.smoke, ranks=grid)
    result.update(dyrank=ours, user_grid=user, user_grid_seconds=user_seconds, user_selected_rank=best_user["rank"],
                  ratio=ours["seconds"] / user_seconds,
                  every_rank_extrapolated={"ranks": r_max, "dyrank_seconds": ours_all, "user_grid_seconds": user_all,
                                           "ratio": ours_all / user_all,
                                           "how": "user: least-squares line in rank through the measured trainings; "
                                                  "dyrank: measured run + unscored ranks at its median eval seconds"})
    print(json.dumps({"ratio": result["ratio"], "every_rank_ratio": result["every_rank_extrapolated"]["ratio"],
                      "dyrank_selected": ours["selected_rank"], "user_selected": best_user["rank"]}), flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
