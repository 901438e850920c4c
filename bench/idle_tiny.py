"""Idle reservations of the tiny pipeline (issue 16): the share of the device-seconds its actors reserved that they
held idle, as the parent run records it (orchestrator/reservations.py), for this checkout and an older commit.

    .venv/bin/python bench/idle_tiny.py --before main --repeats 2    # the figures in bench/results/idle-tiny.json
    .venv/bin/python bench/idle_tiny.py --smoke --out /tmp/idle.json  # 2 steps, 2 ranks, this checkout, logical GPUs

Two settings, each a private Ray of 2 CPUs: `gpus` declares 2 logical GPUs and gives every trainer and evaluator
0.5 of one (device-seconds are GPU-seconds: the issue's goal, idle < 10 %), `cpus` declares none (device-seconds
are the CPUs the actors reserve). Each pipeline runs in a process of its own with its checkout first on PYTHONPATH
(Ray's workers inherit it); `--before REF` is extracted with `git archive` into a temp folder. Repeats alternate the
checkouts so drift on a shared machine hits both alike. Each run also keeps its selected rank and per-rank losses:
the change is in scheduling, so they must agree between the checkouts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, RESULTS, SMOKE_PIPELINE, parse, parser, spread, stamp, write_result

SETTINGS = {  # setting -> (logical GPUs declared, config overrides)
    # one rank per task, as on the CPUs (evaluators holding a GPU default to 8 ranks per forward)
    "gpus": (2, ["resources.trainer_gpus=0.5", "resources.evaluator_gpus=0.5", "evaluation.ranks_per_forward=1"]),
    "cpus": (0, []),
}


def one_run(code: Path, setting: str, overrides: list[str], store: Path) -> dict:
    """The tiny pipeline once, on the checkout `code` (first on sys.path); its parent run's reservation metrics."""
    import ray

    from orchestrator.config import load_config
    from orchestrator.pipeline import run_pipeline
    from orchestrator.tracking import MlflowTracker

    gpus, extra = SETTINGS[setting]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False)
    try:
        result = run_pipeline(load_config(code / "examples" / "tiny.yaml", [*extra, *overrides]))
    finally:
        ray.shutdown()
    metrics = MlflowTracker(os.environ["MLFLOW_TRACKING_URI"]).run(result.parent_run_id).data.metrics
    return {"setting": setting, "idle_share": metrics["idle_share"],
            "reserved_device_seconds": metrics["reserved_device_seconds"],
            "idle_device_seconds": metrics["idle_device_seconds"],
            "idle_device_seconds_by_actor": {k.removesuffix("_idle_device_seconds"): v for k, v in metrics.items()
                                             if k.endswith("_idle_device_seconds") and k != "idle_device_seconds"},
            "pipeline_s": metrics["pipeline_wall_seconds"], "selected_rank": result.selected_rank,
            "eval_loss": {row["rank"]: row["eval_loss"] for row in result.ranks}}


def in_child(code: Path, setting: str, overrides: list[str], tmp: Path) -> dict:
    """one_run in a fresh process whose imports (and its Ray workers') come from `code`."""
    out = tmp / "row.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, __file__, "--child", setting, "--code", str(code), "--out", str(out), *overrides]
    done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {setting} pipeline on {code} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    arguments = parser(smoke="a 2-step, 2-rank pipeline on logical GPUs, this checkout only: a smoke test of this script",
                       out=RESULTS / "idle-tiny.json")
    arguments.add_argument("--repeats", type=int, default=2)
    arguments.add_argument("--before", help="a git ref of this repository to compare with (e.g. main)")
    # how the parent starts one pipeline in a child process (in_child); not for users
    arguments.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    arguments.add_argument("--code", help=argparse.SUPPRESS)
    args, overrides = arguments.parse_known_args()
    if args.child:  # one pipeline, in the process in_child started
        sys.path.insert(0, args.code)
        with tempfile.TemporaryDirectory() as tmp:
            write_result(one_run(Path(args.code), args.child, overrides, Path(tmp) / "mlflow.db"), args.out)
        return
    args = parse(arguments)
    overrides = SMOKE_PIPELINE if args.smoke else []
    settings = ["gpus"] if args.smoke else list(SETTINGS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {"after": REPO}
        if args.before and not args.smoke:
            before = Path(tmp) / "before"
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
            checkouts = {"before": before, "after": REPO}
        for rep in range(1 if args.smoke else args.repeats):
            for label, code in checkouts.items():
                for setting in settings:
                    run_dir = Path(tmp) / f"{label}-{setting}-{rep}"
                    run_dir.mkdir()
                    rows.append({"code": label, "repeat": rep, **in_child(code, setting, overrides, run_dir)})
                    print({k: v for k, v in rows[-1].items() if k not in ("eval_loss", "idle_device_seconds_by_actor")},
                          flush=True)
    summary = {f"{label}/{setting}": {k: spread([r[k] for r in rows if (r["code"], r["setting"]) == (label, setting)])
                                      for k in ("idle_share", "pipeline_s")}
               for label in checkouts for setting in settings}
    same = {}
    if "before" in checkouts:  # the results the two checkouts reached, run by run
        pairs = [(b, a) for b in rows for a in rows if b["code"] == "before" and a["code"] == "after"
                 and (b["setting"], b["repeat"]) == (a["setting"], a["repeat"])]
        same = {"selected_rank_equal": all(b["selected_rank"] == a["selected_rank"] for b, a in pairs),
                "max_relative_eval_loss_difference": max(abs(b["eval_loss"][r] - a["eval_loss"][r]) / abs(b["eval_loss"][r])
                                                         for b, a in pairs for r in b["eval_loss"])}
    out = stamp("bench/idle_tiny.py", "torch", "ray", ray_cpus=2,
                checkouts={"after": git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain") else ""),
                           **({"before": git("rev-parse", args.before)} if "before" in checkouts else {})})
    out.update(settings={k: {"logical_gpus": g, "overrides": o} for k, (g, o) in SETTINGS.items() if k in settings},
               runs=rows, summary=summary, results_agree=same)
    write_result(out, args.out)
    print(json.dumps({"summary": summary, "results_agree": same}, indent=2))


if __name__ == "__main__":
    main()
