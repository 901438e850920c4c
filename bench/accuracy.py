"""The accuracy table from one finished pipeline run: the selected rank's test scores against every baseline's,
with their bootstrap 95 % intervals, read back from MLflow (what `make demo` recorded).

    .venv/bin/python bench/accuracy.py RUN_ID [--tracking-uri sqlite:///mlflow.db] --out bench/results/accuracy.json
    .venv/bin/python bench/accuracy.py --smoke --out /tmp/accuracy.json   # reads a 2-step tiny pipeline run first
"""

from __future__ import annotations

import os
import tempfile

from _common import REPO, SMOKE_PIPELINE, parse, parser, write_result

from orchestrator.tags import CONFIG_NAME_TAG, KIND_TAG  # noqa: E402
from orchestrator.tracking import open_run  # noqa: E402

SCORES = ("test_loss", "test_gen_exact_match", "test_exact_match")


def _with_interval(metrics: dict, key: str) -> dict:
    return {"value": metrics.get(key), "ci_low": metrics.get(f"{key}_ci_low"), "ci_high": metrics.get(f"{key}_ci_high")}


def smoke_run(folder: str) -> tuple[str, str]:
    """(run id, tracking URI) of a 2-step tiny pipeline run into a fresh MLflow store under `folder`."""
    import ray

    from orchestrator.config import load_config
    from orchestrator.pipeline import run_pipeline

    uri = os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    try:
        result = run_pipeline(load_config(REPO / "examples" / "tiny.yaml", SMOKE_PIPELINE))
    finally:
        ray.shutdown()
    return result.parent_run_id, uri


def main() -> None:
    arguments = parser(smoke="run a 2-step tiny pipeline and read it back: a smoke test of this script")
    arguments.add_argument("run_id", nargs="?")
    arguments.add_argument("--tracking-uri")
    args = parse(arguments)
    scratch = tempfile.TemporaryDirectory()
    if args.smoke:
        args.run_id, args.tracking_uri = smoke_run(scratch.name)
    elif not args.run_id:
        arguments.error("RUN_ID is required (or --smoke)")
    tracker, parent = open_run(args.run_id, args.tracking_uri)
    m = parent.data.metrics
    rows = [{"job": f"{parent.data.params.get('adapter.method', 'qdylora')} selected rank {int(m['best_rank'])}",
             "eval_loss": m.get("best_eval_loss"), **{k: _with_interval(m, f"selected_{k}") for k in SCORES}}]
    for child in tracker.children(args.run_id):
        if child.data.tags.get(KIND_TAG) == "baseline":
            cm = child.data.metrics
            rows.append({"job": child.info.run_name, "eval_loss": cm.get("eval_loss"),
                         **{k: _with_interval(cm, k) for k in SCORES}})
        if child.data.tags.get(KIND_TAG) == "zeroshot":
            rows.append({"job": "base model, zero-shot", "eval_loss": child.data.metrics.get("eval_loss")})
    result = {"script": "bench/accuracy.py", "run_id": args.run_id, "config": parent.data.tags.get(CONFIG_NAME_TAG),
              "rows": rows}
    write_result(result, args.out)
    for row in rows:
        cells = [f"{row['eval_loss']:.3f}" if row.get("eval_loss") is not None else ""]
        for k in SCORES:
            s = row.get(k, {})
            cells.append(f"{s['value']:.3f} ({s['ci_low']:.3f}-{s['ci_high']:.3f})" if s.get("ci_low") is not None
                         else (f"{s['value']:.3f}" if s.get("value") is not None else ""))
        print(f"| {row['job']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
