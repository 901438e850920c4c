"""Wall time of the tiny pipeline and of its rank sweep with 1 and 2 evaluator actors, interleaved.

    .venv/bin/python bench/tiny_pipeline_fanout.py --repeats 3
    .venv/bin/python bench/tiny_pipeline_fanout.py --smoke --out /tmp/fanout.json   # 2 steps, 2 ranks, 1 repeat

Sweep wall = last eval run's end - first eval run's start, read back from MLflow. Each pipeline runs on a
fresh private Ray; repeats alternate N=1 and N=2 so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from _common import REPO, RESULTS, SMOKE_PIPELINE, parse, parser, spread, stamp, write_result


def one_run(evaluators: int, store: Path, overrides: list[str]) -> dict:
    import ray

    from orchestrator.config import load_config
    from orchestrator.pipeline import run_pipeline
    from orchestrator.tracking import MlflowTracker

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    cfg = load_config(REPO / "examples" / "tiny.yaml", [f"resources.num_evaluators={evaluators}", *overrides])
    try:
        result = run_pipeline(cfg)
    finally:
        ray.shutdown()
    tracker = MlflowTracker(os.environ["MLFLOW_TRACKING_URI"])
    runs = tracker.children(result.parent_run_id, kind="eval")
    sweep = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    parent = tracker.run(result.parent_run_id).data.metrics
    compute = sum(r.data.metrics["seconds"] for r in runs)  # time inside evaluate_rank, summed over ranks
    return {"evaluators": evaluators, "sweep_s": sweep, "eval_compute_s": compute,
            "pipeline_s": parent["pipeline_wall_seconds"], "ranks": len(runs),
            "idle_share": parent["idle_share"]}  # of the device-seconds its actors reserved (issue 16)


def main() -> None:
    arguments = parser(smoke="a 2-step, 2-rank pipeline, 1 repeat: a smoke test of this script",
                       out=RESULTS / "tiny_pipeline_fanout.json")
    arguments.add_argument("--repeats", type=int, default=3)
    args = parse(arguments)
    if args.smoke:
        args.repeats = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for n in (1, 2):
                rows.append(one_run(n, Path(tmp) / "mlflow.db", SMOKE_PIPELINE if args.smoke else []))
                print(rows[-1], flush=True)
    summary = {}
    for n in (1, 2):
        mine = [r for r in rows if r["evaluators"] == n]
        summary[n] = {k: spread([r[k] for r in mine], count=False) for k in ("sweep_s", "eval_compute_s", "pipeline_s")}
    out = stamp("bench/tiny_pipeline_fanout.py", "torch", "ray")
    out.update(runs=rows, summary=summary,
               sweep_speedup_2_over_1=summary[1]["sweep_s"]["median"] / summary[2]["sweep_s"]["median"])
    write_result(out, args.out)
    print(json.dumps(out["summary"], indent=2), "\nspeedup", out["sweep_speedup_2_over_1"])


if __name__ == "__main__":
    main()
