"""Fidelity on real weights (issue 18): does the rank one QDyLoRA run selects match what a QLoRA grid search selects,
and does qlora-svd's? One `dyrank run` of examples/smollm2-fidelity.yaml per seed, read back from MLflow, with the
paired per-example test values each comparison rests on kept in the JSON, so seeds run in separate sessions pool.

    .venv/bin/python bench/fidelity.py --seeds 0 --out bench/results/fidelity-smollm2-countries.json   # ~70 min here
    .venv/bin/python bench/fidelity.py --seeds 1 --out bench/results/fidelity-smollm2-countries.json   # adds seed 1
    .venv/bin/python bench/fidelity.py --update-mode frozen --seeds 0 --out bench/results/fidelity-...json  # ~8 min
    .venv/bin/python bench/fidelity.py --smoke --out /tmp/fidelity.json
    .venv/bin/python bench/fidelity.py --table --out bench/results/fidelity-smollm2-countries.json   # docs' tables

A seed's entry holds the pipeline's fidelity block per one-run method (evaluators/fidelity.py: selected ranks,
regret and per-rank test deltas with paired 95 % intervals, Spearman on the grid, cost ratio), the QLoRA grid's
best-versus-worst test interval (if it includes 0 the curves did not separate and the regret is inconclusive),
the training and eval_every curves, and the per-example arrays. "pooled" recomputes regret, deltas and separation
over the examples of every seed in the file (a pair per example and seed). `--update-mode frozen` trains the same
QDyLoRA job in DyLoRA's frozen mode, sweeps it on the grid and compares it with the seed's (cumulative) run on the
same validation examples, rank by rank and over the grid.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, SMOKE_PIPELINE, TRAINING_LIBRARIES, parse, parser, stamp, write_result

from evaluators import per_example as pe  # noqa: E402
from evaluators.bootstrap import paired_difference  # noqa: E402
from evaluators.fidelity import metric_value  # noqa: E402
from orchestrator.config import ConfigError  # noqa: E402
from orchestrator.errors import TrackingError  # noqa: E402
from orchestrator.fidelity_stage import FIDELITY_ARTIFACT  # noqa: E402

SMOKE = [*SMOKE_PIPELINE, "model.source=tiny-llama", "data.dataset=tiny-qa", "adapter.r_max=4", "training.max_steps=4",
         "evaluation.ranks=all", "baselines.ranks=[2,4]", "baselines.methods=[{method: qlora-svd, r_max: 4}]",
         "evaluation.max_samples=16", "training.eval_every=2", "training.eval_samples=4", "data.max_seq_len=48"]
SAMPLES = 2000  # bootstrap draws for the pooled intervals


def stacked(parts: list[dict]) -> dict:
    """Several seeds' per-example columns as one set of examples (each seed's example is its own pair)."""
    return {k: np.concatenate([np.asarray(p[k], dtype=np.float64) for p in parts]) for k in pe.COLUMNS}


def interval(a: dict, b: dict) -> dict:
    d = paired_difference(a, b, "test_loss", SAMPLES, 0)
    return {k: d[k] for k in ("diff", "low", "high")}


def separation(grid_test: dict) -> dict:
    """The QLoRA grid's best and worst ranks on test, and the paired interval of their difference: did the grid's
    curve separate beyond example noise?"""
    losses = {r: metric_value(c) for r, c in grid_test.items()}
    best, worst = min(losses, key=losses.get), max(losses, key=losses.get)
    d = interval(grid_test[worst], grid_test[best])
    return {"best_rank": best, "worst_rank": worst, **d, "separated": d["low"] > 0}


class RunReader:
    """A finished pipeline's child runs and per-example artifacts, from MLflow."""

    def __init__(self, uri: str, parent_id: str, scratch: Path):
        from orchestrator.tracking import open_run

        self.tracker, _ = open_run(parent_id, uri)
        self.parent_id, self.scratch = parent_id, scratch

    def of_kind(self, kind: str) -> list:
        return self.tracker.children(self.parent_id, kind)

    def evals(self) -> dict:
        return {int(r.data.params["rank"]): r for r in self.of_kind("eval")}

    def baselines(self) -> dict:
        return {r.info.run_name: r for r in self.of_kind("baseline")}

    def values(self, run, split: str, rank: int | None = None) -> dict:
        name = f"{pe.ARTIFACT_DIR}/{pe.artifact_name(split, rank)}"
        path = self.tracker.download(run.info.run_id, name, self.scratch / run.info.run_id)
        return {k: v.tolist() for k, v in pe.load(path).items()}

    def curves(self, run) -> dict:
        """{metric: [[step, value], ...]}: a run's training-loss and eval_every probe (val_loss_r*) series."""
        return {key: [[p.step, p.value] for p in sorted(self.tracker.metric_history(run.info.run_id, key),
                                                          key=lambda p: p.step)]
                for key in run.data.metrics if key.startswith(("train_loss", "val_loss_r"))}


def recipe_of(config: str, overrides: list[str]) -> str:
    """What a seed's entry must share with the others it pools with: the resolved config (comments, key order and
    how a value was given do not count), without the seed."""
    from orchestrator.config import load_config

    resolved = load_config(config, overrides).model_dump(mode="json")
    resolved["training"].pop("seed", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def run_seed(config: str, overrides: list[str], seed: int, uri: str) -> tuple[object, float]:
    import ray

    from dashboards.summary import write_pipeline_outputs
    from orchestrator.config import load_config
    from orchestrator.pipeline import run_pipeline

    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = load_config(config, [*overrides, f"training.seed={seed}"])
    began = time.perf_counter()
    try:
        result = run_pipeline(cfg, write_outputs=write_pipeline_outputs)
    finally:
        ray.shutdown()
    return result, time.perf_counter() - began


def seed_entry(parent_id: str, uri: str, scratch: Path) -> dict:
    """One finished pipeline run (any `dyrank run` of a config with a grid), read back from its MLflow store."""
    reader = RunReader(uri, parent_id, scratch)
    parent = reader.tracker.run(parent_id)
    fidelity = json.loads(reader.tracker.download(parent_id, FIDELITY_ARTIFACT, scratch / parent_id).read_text())
    grid, blocks = fidelity["grid"], fidelity["methods"]
    main_method = parent.data.params.get("adapter.method", "qdylora")
    evals, baselines = reader.evals(), reader.baselines()
    dy_pick = blocks[main_method]["selected_rank"]
    arrays = {
        "qlora_test": {r: reader.values(baselines[f"qlora-r{r}"], "test") for r in grid},
        "qlora_validation": {r: reader.values(baselines[f"qlora-r{r}"], "validation") for r in grid},
        f"{main_method}_test": {r: reader.values(evals[r], "test") for r in sorted({*grid, dy_pick})},
        "qdylora_validation": {r: reader.values(evals[r], "validation") for r in grid},
    }
    for name, run in baselines.items():  # rank-dynamic baselines (qlora-svd): test at the grid and their pick
        method = run.data.params.get("method", "")
        if method in blocks and method != main_method:
            pick = blocks[method]["selected_rank"]
            arrays[f"{method}_test"] = {r: reader.values(run, "test", r) for r in sorted({*grid, pick})}
    [trained] = reader.of_kind("train")
    curves = {main_method: reader.curves(trained), **{name: reader.curves(run) for name, run in baselines.items()}}
    return {"parent_run_id": parent_id, "wall_seconds": (parent.info.end_time - parent.info.start_time) / 1000,
            "grid": grid, "blocks": blocks, "selected_rank": int(parent.data.metrics["best_rank"]),
            "separation": separation(arrays["qlora_test"]),
            "curves": curves, "per_example": arrays}


def pooled(seeds: dict) -> dict:
    """Regret, per-rank deltas and the grid's separation over every seed's examples, per one-run method."""
    entries = list(seeds.values())
    grid = entries[0]["grid"]
    def q(entry, rank):  # JSON keys are strings (entries are stored as JSON)
        return entry["per_example"]["qlora_test"][str(rank)]

    out = {"seeds": sorted(seeds), "grid": grid, "methods": {}}
    worst_best = [(e["separation"]["worst_rank"], e["separation"]["best_rank"]) for e in entries]
    out["separation"] = interval(stacked([q(e, w) for e, (w, _) in zip(entries, worst_best)]),
                                 stacked([q(e, b) for e, (_, b) in zip(entries, worst_best)]))
    out["separation"]["separated"] = out["separation"]["low"] > 0
    for method in entries[0]["blocks"]:
        key = f"{method}_test"

        def arrays(entry):
            return {int(r): v for r, v in entry["per_example"][key].items()}
        picks = [(e["blocks"][method]["selected_rank"], e["blocks"][method]["grid_selected_rank"]) for e in entries]
        out["methods"][method] = {
            "selected_ranks": [p for p, _ in picks], "grid_selected_ranks": [g for _, g in picks],
            "regret": interval(stacked([arrays(e)[p] for e, (p, _) in zip(entries, picks)]),
                               stacked([q(e, g) for e, (_, g) in zip(entries, picks)])),
            "per_rank": {r: interval(stacked([arrays(e)[r] for e in entries]), stacked([q(e, r) for e in entries]))
                         for r in grid},
            "spearman_on_grid": [e["blocks"][method]["spearman_on_grid"] for e in entries],
            "cost_ratio": [e["blocks"][method].get("cost_ratio") for e in entries],
        }
        out["methods"][method]["regret"]["inconclusive"] = not out["separation"]["separated"]
    return out


def update_mode_entry(config: str, overrides: list[str], seed: int, mode: str, reference: dict, uri: str,
                      scratch: Path) -> dict:
    """The same QDyLoRA job in another update mode, swept on the grid (no baselines), against the seed's run on
    the same validation examples (the seed's run scored test at the grid through its baselines; this one has none)."""
    grid = reference["grid"]
    result, wall_s = run_seed(config, [*overrides, f"adapter.update_mode={mode}", f"evaluation.ranks={grid}",
                                          "baselines.ranks=[]", "baselines.methods=[]"], seed, uri)
    reader = RunReader(uri, result.parent_run_id, scratch)
    evals = reader.evals()
    ref = {int(r): v for r, v in reference["per_example"]["qdylora_validation"].items()}
    mine = {r: reader.values(evals[r], "validation") for r in grid}
    per_rank = {r: {k: v for k, v in paired_difference(mine[r], ref[r], "eval_loss", SAMPLES, 0).items()
                    if k != "upper"} for r in grid}
    over_grid = paired_difference(stacked([mine[r] for r in grid]), stacked([ref[r] for r in grid]), "eval_loss",
                                  SAMPLES, 0)
    return {"mode": mode, "parent_run_id": result.parent_run_id, "wall_seconds": wall_s,
            "validation_loss": {r: metric_value(mine[r]) for r in grid},
            "reference_validation_loss": {r: metric_value(ref[r]) for r in grid},
            "per_rank_minus_reference": per_rank,
            "over_grid_minus_reference": {k: over_grid[k] for k in ("diff", "low", "high")},
            "curves": reader.curves(reader.of_kind("train")[0])}


def _ci(d: dict) -> str:
    return f"{d['diff']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})"


def curve_table(seeds: dict) -> list[str]:
    """Per seed and job: the eval_every validation probes at each probe step, and the training loss averaged over
    the steps since the previous probe (one step's loss is one batch: too noisy to read alone). A job whose curves
    are another's (qlora-svd standing on the grid's r_max training) is left out."""
    steps = sorted({int(s) for e in seeds.values() for c in e["curves"].values() for k, series in c.items()
                    if k.startswith("val_loss_r") for s, _ in series})
    lines = ["| seed | job | curve | " + " | ".join(f"step {s}" for s in steps) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    for seed, entry in sorted(seeds.items()):
        shown = []
        for job, curves in sorted(entry["curves"].items(), key=lambda kv: "svd" in kv[0]):  # the grid job's name first
            if curves in shown:
                continue
            shown.append(curves)
            train = curves.get("train_loss", [])
            windows = [[v for s, v in train if lo < s <= hi] for lo, hi in zip([0, *steps], steps)]
            lines.append(f"| {seed} | {job} | train loss (mean since the last probe) | "
                         + " | ".join(f"{np.mean(w):.3f}" if w else "" for w in windows) + " |")
            for key in sorted((k for k in curves if k.startswith("val_loss_r")), key=lambda k: int(k[10:])):
                at = dict((int(s), v) for s, v in curves[key])
                lines.append(f"| {seed} | {job} | validation loss at rank {key[10:]} | "
                             + " | ".join(f"{at[s]:.3f}" if s in at else "" for s in steps) + " |")
    return lines


def tables(result: dict) -> str:
    """The docs' tables (markdown) from a results JSON: selection per one-run method, seed by seed and pooled; the
    per-rank test deltas; the grid's separation; the update-mode comparison. Nothing is recomputed but the pooled
    block the JSON already holds."""
    seeds, pool = result["seeds"], result["pooled"]
    lines = ["| seed | method | selected rank (all ranks / on grid) | grid search's rank | regret, test loss (95 % CI) "
             "| regret on grid | Spearman on grid | cost ÷ grid |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, entry in sorted(seeds.items()):
        for method, b in entry["blocks"].items():
            cost = f"{b['cost_ratio']:.2f}" if b.get("cost_ratio") is not None else "-"
            lines.append(f"| {seed} | {method} | {b['selected_rank']} / {b['selected_rank_on_grid']} | "
                         f"{b['grid_selected_rank']} | {_ci(b['regret'])} | {_ci(b['regret_on_grid'])} | "
                         f"{b['spearman_on_grid']:.2f} | {cost} |")
    for method, m in pool["methods"].items():
        lines.append(f"| pooled {'+'.join(pool['seeds'])} | {method} | {m['selected_ranks']} | "
                     f"{m['grid_selected_ranks']} | {_ci(m['regret'])}{' inconclusive' if m['regret']['inconclusive'] else ''}"
                     f" | | {', '.join(f'{x:.2f}' for x in m['spearman_on_grid'])} | "
                     f"{', '.join('-' if c is None else f'{c:.2f}' for c in m['cost_ratio'])} |")
    grid = pool["grid"]
    lines += ["", "| seed | method | " + " | ".join(f"test loss − QLoRA r{r} (95 % CI)" for r in grid) + " |",
              "| --- | --- | " + " | ".join("---" for _ in grid) + " |"]
    for seed, entry in sorted(seeds.items()):
        for method, b in entry["blocks"].items():
            lines.append(f"| {seed} | {method} | " + " | ".join(_ci(b["per_rank"][str(r)]) for r in grid) + " |")
    for method, m in pool["methods"].items():
        lines.append(f"| pooled | {method} | " + " | ".join(_ci(m["per_rank"][str(r)]) for r in grid) + " |")
    lines += ["", "| seed | QLoRA grid test loss, " + ", ".join(f"r{r}" for r in grid)
              + " | worst − best rank (95 % CI) | separated |", "| --- | --- | --- | --- |"]
    for seed, entry in sorted(seeds.items()):
        sep, curve = entry["separation"], entry["blocks"][next(iter(entry["blocks"]))]["curves"]["grid_test"]
        lines.append(f"| {seed} | {', '.join(f'{curve[str(r)]:.3f}' for r in grid)} | r{sep['worst_rank']} − "
                     f"r{sep['best_rank']}: {_ci(sep)} | {'yes' if sep['separated'] else 'no'} |")
    sep = pool["separation"]
    lines.append(f"| pooled | | {_ci(sep)} | {'yes' if sep['separated'] else 'no'} |")
    lines += ["", *curve_table(seeds)]
    for name, u in sorted(result.get("update_mode", {}).items()):
        lines += ["", f"| {name}: rank | validation loss, {u['mode']} | cumulative (the seed's run) | "
                  f"{u['mode']} − cumulative (95 % CI) |", "| --- | --- | --- | --- |"]
        for r in grid:
            lines.append(f"| {r} | {u['validation_loss'][str(r)]:.3f} | {u['reference_validation_loss'][str(r)]:.3f} | "
                         f"{_ci(u['per_rank_minus_reference'][str(r)])} |")
        lines.append(f"| over the grid | | | {_ci(u['over_grid_minus_reference'])} |")
    return "\n".join(lines)


def main() -> None:
    arguments = parser(smoke="the tiny model, 4 steps, a 2-rank grid: checks this script still runs")
    arguments.add_argument("--config", default=str(REPO / "examples" / "smollm2-fidelity.yaml"))
    arguments.add_argument("--seeds", type=int, nargs="+", default=[0])
    arguments.add_argument("--set", dest="extra", action="append", default=[])
    arguments.add_argument("--update-mode", choices=["frozen", "cumulative"])
    arguments.add_argument("--from-run", metavar="RUN_ID", help="read a finished pipeline run of the seed instead of "
                           "running it (e.g. one `dyrank run` made, or a read that failed)")
    arguments.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    arguments.add_argument("--table", action="store_true", help="print the docs' markdown tables from --out; runs nothing")
    args = parse(arguments)
    if args.table:
        try:
            print(tables(json.loads(Path(args.out).read_text())))
        except (OSError, ValueError, KeyError) as exc:
            arguments.error(f"--out {args.out}: no fidelity results to show ({type(exc).__name__}: {exc})")
        return
    scratch = Path(tempfile.mkdtemp(prefix="dyrank-bench-fidelity-"))
    if args.smoke:
        args.extra, args.config = [*SMOKE, *args.extra], str(REPO / "examples" / "tiny.yaml")
        args.tracking_uri = f"sqlite:///{scratch}/mlflow.db"
    if not Path(args.config).is_file():
        arguments.error(f"--config {args.config}: no such file")
    try:
        recipe = recipe_of(args.config, args.extra)
    except ConfigError as exc:  # a bad config or --set: one line, before anything runs
        arguments.error(str(exc))
    out = Path(args.out)
    try:
        recorded = json.loads(out.read_text()) if out.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # never overwrite what we cannot read
        arguments.error(f"--out {out}: not a results JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                        "write to another --out")
    result = recorded or stamp(
        "bench/fidelity.py", *TRAINING_LIBRARIES, config=Path(args.config).name, overrides=args.extra,
        recipe=recipe, smoke=args.smoke, seeds={}, update_mode={})
    if result.get("recipe") != recipe:  # pooling seeds of different recipes would mix two experiments
        raise SystemExit(f"{out}: recorded with another config or --set (recipe {result.get('recipe')}, "
                         f"now {recipe}); write to another --out")
    if args.smoke:  # the smoke run goes through both paths: a seed, then the frozen mode against it
        args.update_mode = args.update_mode or "frozen"
    for seed in args.seeds:
        if not args.update_mode or args.smoke:
            parent_id = args.from_run or run_seed(args.config, args.extra, seed, args.tracking_uri)[0].parent_run_id
            try:
                entry = seed_entry(parent_id, args.tracking_uri, scratch)
            except TrackingError as exc:  # a wrong --from-run or --tracking-uri: one line, nothing written
                raise SystemExit(f"error: {exc}") from None
            result["seeds"][str(seed)] = json.loads(json.dumps(entry, default=float))  # string keys, as when re-read
            result["pooled"] = pooled(result["seeds"])
            write_result(result, out)  # after each seed: a cut-short run keeps what it finished
        if args.update_mode:
            if str(seed) not in result["seeds"]:
                raise SystemExit(f"{out}: no seed {seed} run to compare the {args.update_mode} mode with; run it first")
            entry = update_mode_entry(args.config, args.extra, seed, args.update_mode, result["seeds"][str(seed)],
                                      args.tracking_uri, scratch)
            result["update_mode"][f"{args.update_mode}-seed{seed}"] = json.loads(json.dumps(entry, default=float))
            write_result(result, out)
    for method, row in result.get("pooled", {"methods": {}})["methods"].items():
        r = row["regret"]
        print(f"{method:<10} selected {row['selected_ranks']} grid {row['grid_selected_ranks']}  regret "
              f"{r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]{'  (inconclusive)' if r['inconclusive'] else ''}")


if __name__ == "__main__":
    main()
