"""The accuracy table from one finished pipeline run: the selected rank's test scores against every baseline's,
with their bootstrap 95 % intervals, read back from MLflow (what `make demo` recorded).

    .venv/bin/python bench/accuracy.py RUN_ID [--tracking-uri sqlite:///mlflow.db] --out bench/results/accuracy.json
"""

from __future__ import annotations

from _common import parser, write_result

from orchestrator.tags import CONFIG_NAME_TAG, KIND_TAG  # noqa: E402
from orchestrator.tracking import open_run  # noqa: E402

SCORES = ("test_loss", "test_gen_exact_match", "test_exact_match")


def _with_interval(metrics: dict, key: str) -> dict:
    return {"value": metrics.get(key), "ci_low": metrics.get(f"{key}_ci_low"), "ci_high": metrics.get(f"{key}_ci_high")}


def main() -> None:
    arguments = parser()
    arguments.add_argument("run_id")
    arguments.add_argument("--tracking-uri")
    args = arguments.parse_args()
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
