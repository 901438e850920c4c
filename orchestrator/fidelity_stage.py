"""The pipeline's fidelity stage: does the one run pick the rank the QLoRA search would?

When baselines.ranks holds two or more ranks the sweep also covers (the grid G), QDyLoRA is scored on test at
every rank of G, and each one-run method (the main QDyLoRA run, and any rank-dynamic baseline such as qlora-svd)
is compared with the QLoRA grid by evaluators/fidelity.py, from per-example values alone. The result goes on the
parent run: flat metrics (fidelity_<method>_*), per-rank curves as metric series with step = rank, the grid as a
tag, and the whole block as fidelity/fidelity.json; the summary table and the report read it from there.

Per-example values (evaluators/per_example.py) are kept by PerExampleStore: in memory as results arrive, logged
once per run and split as an artifact, and read back from those artifacts by a resumed pipeline.
`FidelityStage` is the pipeline's mixin (like orchestrator/sweep_stage.py's SweepStage) that wires these in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evaluators import per_example as pe
from evaluators.fidelity import common_grid, compare_to_grid, fidelity_metrics, rows_from
from evaluators.selection import select_rank
from orchestrator.messages import JobKey, TrainingReply

FIDELITY_ARTIFACT = "fidelity/fidelity.json"
GRID_TAG = "dyrank.fidelity.grid"
FIDELITY_SKIPPED_TAG = "dyrank.fidelity.skipped"  # why a pipeline with a grid has no block (older runs resumed)


class PerExampleStore:
    def __init__(self, tracker, records, folder: Path):
        self.tracker, self.records, self.folder = tracker, records, Path(folder)
        self.values: dict[tuple, dict] = {}

    def put(self, key: JobKey, split: str, columns: dict | None, rank: int | None = None) -> None:
        if not columns:
            return
        run_id = self.records[key].run_id
        path = pe.save(columns, self.folder / run_id, split, rank)
        self.tracker.log_artifact(run_id, path, pe.ARTIFACT_DIR)
        self.values[(key, split, rank)] = columns

    def get(self, key: JobKey, split: str, rank: int | None = None) -> dict:
        if (key, split, rank) not in self.values:  # recorded before a resume: read the run's artifact back
            run_id = self.records[key].run_id
            name = f"{pe.ARTIFACT_DIR}/{pe.artifact_name(split, rank)}"
            try:
                path = self.tracker.download(run_id, name, self.folder / "downloaded" / run_id)
            except Exception as exc:  # noqa: BLE001 - the store's own error types vary by backend
                raise LookupError(f"run {run_id} has no {name} ({type(exc).__name__}); per-example values are "
                                  "recorded by this version of dyrank only") from None
            self.values[(key, split, rank)] = pe.load(path)
        return self.values[(key, split, rank)]


def fidelity_grid(cfg) -> list[int]:
    """G: the QLoRA baseline ranks (baselines.ranks) the main sweep also covers."""
    return common_grid(cfg.baselines.ranks, cfg.eval_ranks()) if cfg.adapter.dynamic else []


def competitor_sweep(cfg, job) -> tuple[int, ...]:
    """Ranks a rank-dynamic baseline (qlora-svd) is scored at: the main sweep's ranks within its own range."""
    if not job.config.adapter.dynamic:
        return ()
    a = job.config.adapter
    return tuple(r for r in cfg.eval_ranks() if a.r_min <= r <= a.r_max)


def selector(cfg):
    """The pipeline's own policy over per-example values: both sides of a comparison are selected alike."""
    s = cfg.selection

    def select(per_rank) -> int:
        return select_rank(rows_from(per_rank, s.metric), s.metric, s.policy, s.tolerance, s.greater_is_better,
                           per_example=per_rank, margin=s.margin, confidence=s.confidence,
                           samples=cfg.evaluation.bootstrap_samples, seed=cfg.training.seed)["rank"]
    return select


def competitor_test_ranks(cfg):
    """Which swept ranks a rank-dynamic baseline is scored at on test, from its validation values: the grid and
    the rank the pipeline's policy selects (what its fidelity block reads), as for the main QDyLoRA run; scoring
    test at every rank would double the sweep's cost for curves nobody selects on."""
    grid, select = fidelity_grid(cfg), selector(cfg)

    def test_ranks(validation: dict) -> list[int]:
        return sorted({*(r for r in grid if r in validation), select(validation)})
    return test_ranks


def compute_blocks(cfg, store: PerExampleStore, records, ranks: list[dict], selected_rank: int,
                   trained_seconds: float) -> dict:
    """{"grid": G, "methods": {method: block}}: every one-run method against the QLoRA grid (needs G's test
    scores of the main adapter recorded first)."""
    grid = fidelity_grid(cfg)
    jobs = cfg.baseline_jobs()
    grid_jobs = {job.rank: job.name for job in jobs[:len(cfg.baselines.ranks)] if job.rank in grid}
    grid_val = {r: store.get(JobKey("baseline", n), "validation") for r, n in grid_jobs.items()}
    grid_test = {r: store.get(JobKey("baseline", n), "test") for r, n in grid_jobs.items()}
    grid_seconds = sum(records[JobKey("baseline", n)].row.get("device_seconds", 0.0) for n in grid_jobs.values())
    common = dict(select=selector(cfg), metric=cfg.selection.metric, samples=cfg.evaluation.bootstrap_samples,
                  seed=cfg.training.seed, grid_seconds=grid_seconds)
    main = JobKey("eval", None)
    swept = [row["rank"] for row in ranks]
    blocks = {cfg.adapter.method: compare_to_grid(
        {r: store.get(main._replace(id=r), "validation") for r in swept},
        {r: store.get(main._replace(id=r), "test") for r in sorted({*grid, selected_rank})},
        grid_val, grid_test, one_run_seconds=trained_seconds + sum(row.get("seconds", 0.0) for row in ranks),
        **common)}
    for job in jobs[len(cfg.baselines.ranks):]:
        sweep = competitor_sweep(cfg, job)
        if len(common_grid(grid, sweep)) < 2:
            continue
        key = JobKey("baseline", job.name)
        row = records[key].row
        validation = {r: store.get(key, "validation", r) for r in sweep}
        test = {r: store.get(key, "test", r) for r in competitor_test_ranks(cfg)(validation)}
        blocks[job.method if job.method not in blocks else job.name] = compare_to_grid(
            validation, test,
            grid_val, grid_test, one_run_seconds=row.get("device_seconds", 0.0) + row.get("score_seconds", 0.0),
            **common)
    return {"grid": grid, "methods": blocks}


def series_name(method: str, metric: str) -> str:
    return f"curve_{method.replace('-', '_')}_{metric}"


def record_fidelity(tracker, parent_id: str, fidelity: dict) -> None:
    """Metrics, per-rank series (step = rank), the grid tag and the JSON block on the parent run."""
    metrics = {}
    for method, block in fidelity["methods"].items():
        metrics.update(fidelity_metrics(block, f"fidelity_{method.replace('-', '_')}_"))
        curves = block["curves"]
        for name, curve in ((series_name(method, block["metric"]), curves["validation"]),
                            (series_name(method, "test_loss"), curves["test"]),
                            (series_name("qlora", block["metric"]), curves["grid_validation"]),
                            (series_name("qlora", "test_loss"), curves["grid_test"])):
            for rank, value in curve.items():
                tracker.log_metrics(parent_id, {name: value}, step=int(rank))
    tracker.log_metrics(parent_id, metrics)
    tracker.set_tags(parent_id, {GRID_TAG: ",".join(map(str, fidelity["grid"]))})
    tracker.log_text(parent_id, json.dumps(fidelity, indent=2, default=float), FIDELITY_ARTIFACT)


def reused_training(cfg, job) -> str | None:
    """The QLoRA grid job whose training a qlora-svd baseline `job` can stand on instead of training again: the
    one at its r_max with the same job otherwise (data, base, training, alpha, dropout, targets); None if none."""
    a = job.config.adapter
    if a.spec.samples_rank or not a.dynamic:  # only a method that trains plainly at r_max (qlora-svd)
        return None

    def comparable(config) -> dict:
        dump = config.model_dump(mode="json")
        for key in ("method", "rank", "r_min", "r_max", "update_mode"):
            dump["adapter"].pop(key, None)
        dump["evaluation"].pop("ranks", None)
        return dump

    for grid_job in cfg.baseline_jobs()[:len(cfg.baselines.ranks)]:
        if grid_job.rank == a.r_max and comparable(grid_job.config) == comparable(job.config):
            return grid_job.name
    return None


class FidelityStage:
    """The pipeline's (orchestrator/pipeline.py) issue-17 steps, a mixin like SweepStage: per-example values kept
    for every scored run, a qlora-svd baseline made from the QLoRA grid's r_max training, the policy's selection
    with its paired evidence, and the fidelity block after the selected rank's test score."""

    def init_fidelity(self) -> None:
        self.per_example = PerExampleStore(self.tracker, self.records, self.workdir / "per_example")
        # QLoRA grid job -> the qlora-svd baseline made from its training (no second run at the same rank)
        self.derives = {grid: name for name, job in self.baselines.items() if (grid := reused_training(self.cfg, job))}

    def made_from_grid(self, key: JobKey) -> bool:
        """A baseline that is not trained on its own: the grid job it stands on still has to train."""
        grid = next((g for g, name in self.derives.items() if name == key.id), None)
        return key.kind == "baseline" and grid is not None and JobKey("baseline", grid) not in self.records

    def scoring_args(self, key: JobKey) -> tuple[tuple[int, ...], tuple[int, ...] | None, object]:
        """Trainer.train's sweep_ranks, svd_sweep and test_ranks for a training job (see there)."""
        if key.kind != "baseline":
            return (), None, None
        derived = self.derives.get(key.id)
        svd_sweep = (competitor_sweep(self.cfg, self.baselines[derived])
                     if derived and JobKey("baseline", derived) not in self.records else None)
        return competitor_sweep(self.cfg, self.baselines[key.id]), svd_sweep, competitor_test_ranks(self.cfg)

    def record_scores_of(self, name: str, run_id: str, reply: TrainingReply) -> None:
        """A baseline's per-example values (artifacts) and a rank-dynamic baseline's curve (series, step = rank);
        then the baseline made from its training, if any."""
        for split_rank, columns in reply.per_example.items():  # "validation", or "validation@4" for a swept rank
            split, _, rank = split_rank.partition("@")
            self.per_example.put(JobKey("baseline", name), split, columns, int(rank) if rank else None)
        for rank, scores in sorted(reply.rank_scores.items()):
            self.tracker.log_metrics(run_id, {f"curve_{k}": v for k, v in scores.items()}, step=rank)
        if reply.derived is not None:  # the qlora-svd baseline standing on this training
            self.record_baseline(self.derives[name], reply.derived)

    def select(self, ranks: list[dict]) -> dict:
        """The policy's row; smallest-not-worse reads the ranks' recorded per-example values."""
        cfg, s = self.cfg, self.cfg.selection
        paired = ({r["rank"]: self.per_example.get(JobKey("eval", r["rank"]), "validation") for r in ranks}
                  if s.policy == "smallest-not-worse" else None)
        return select_rank(ranks, s.metric, s.policy, s.tolerance, s.greater_is_better, per_example=paired,
                           margin=s.margin, confidence=s.confidence, samples=cfg.evaluation.bootstrap_samples,
                           seed=cfg.training.seed)

    def fidelity(self, ranks: list[dict], selected_rank: int, adapter_key: str, files_ref) -> dict | None:
        """With a grid of 2+ ranks: G's test scores of the main adapter, then every one-run method's block,
        recorded on the parent; None without a grid, or when older runs (a resume) hold no per-example values."""
        grid = fidelity_grid(self.cfg)
        if len(grid) < 2:
            return None
        self.score_test(grid, adapter_key, files_ref)
        try:
            fidelity = compute_blocks(self.cfg, self.per_example, self.records, ranks, selected_rank,
                                      self.records[self.main_key].row.get("device_seconds", 0.0))
        except LookupError as exc:  # runs recorded by an older dyrank, before a resume: no per-example values
            self.tracker.set_tags(self.parent_id, {FIDELITY_SKIPPED_TAG: str(exc)})
            print(f"note: no fidelity block: {exc}", file=sys.stderr)
            return None
        record_fidelity(self.tracker, self.parent_id, fidelity)
        return fidelity
