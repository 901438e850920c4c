"""The pipeline: one QDyLoRA training, baselines of any method beside it, every rank evaluated, one selected.

Stages, in the order `Pipeline.run` calls them:
  1. trainers   one Ray actor per training job (QDyLoRA + each baseline job: QLoRA ranks and
                baselines.methods), launched together; a baseline scores itself once, at its rank
  2. evaluators a pool that loads the base while training runs and scores the base model (zero-shot)
  3. sweep      the QDyLoRA adapter fans out: every rank scored on validation, results streamed back
  4. select     the policy picks a rank on validation; the selected rank and baselines are scored on test
  5. summarize  parent metrics, plot, CSV and the summary table
The driver is MLflow's only writer. A child run is created when its result is in, so a resumed pipeline
(`dyrank resume`) finds finished work as finished runs and never records anything twice.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from dashboards.summary import cost_table, plot_ranks, summary_table, write_rank_csv
from evaluators.selection import select_rank
from orchestrator import ray_runtime
from orchestrator.actors import RankEvaluator, Trainer, actor_options, read_adapter_files
from orchestrator.buffered_tracking import BufferedTracker
from orchestrator.config import parse_config
from orchestrator.errors import PipelineError
from orchestrator.ray_runtime import in_ray_job
from orchestrator.tracking import MlflowTracker, Tracker, check_reachable, open_run, resolve_tracking_uri
from orchestrator.tracking_uri import is_durable_in_ray_job
from trainers.data import load_splits, split_fingerprint
from trainers.paths import cache_dir

TRAIN_SERIES = {"train_loss": "train_loss", "rank": "sampled_rank", "lr": "lr", "grad_norm": "grad_norm"}


@dataclass
class Recorded:
    """A finished child run and its result row ({"rank": ..., metrics}), without reading MLflow back."""

    run_id: str
    row: dict


@dataclass
class PipelineResult:
    parent_run_id: str
    selected_rank: int
    ranks: list[dict]
    baselines: list[dict]
    table: str


def _metric_rows(lines: list[str]) -> list[dict]:
    return [{TRAIN_SERIES.get(k, k): v for k, v in json.loads(line).items()} for line in lines]


NOT_METRICS = {"rank", "start", "end", "pid"}  # placement and timestamps go to tags and run times
COSTS = ("trainable_params", "adapter_bytes", "peak_memory_bytes", "device_seconds", "step_seconds")


def _costs(reply: dict) -> dict:
    """The cost metrics every training run carries, whatever its method (trainers.finetune.COST_KEYS)."""
    return {k: reply["costs"][k] for k in COSTS if k in reply.get("costs", {})} or {"device_seconds": reply["device_seconds"]}


def _scalars(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Pipeline:
    def __init__(self, cfg, tracker: Tracker, parent_id: str, on_event: Callable[[str, dict], None] | None = None,
                 step_sink=None):
        self.cfg, self.tracker, self.parent_id, self.step_sink = cfg, tracker, parent_id, step_sink
        self.experiment_id = tracker.run(parent_id).info.experiment_id
        self.on_event = on_event or (lambda kind, payload: None)
        self.workdir = cache_dir("pipelines", parent_id)
        self.config_dict = cfg.model_dump(mode="json")
        self.actors: list = []

    # ---- bookkeeping -----------------------------------------------------------------------------
    def _load_existing(self) -> None:
        """Child runs an earlier driver recorded, by (kind, rank), baselines by (kind, job name). FINISHED
        ones are done work; a RUNNING one (the driver died while writing it) is reused rather than
        duplicated; a FAILED one is kept as the record of that failure."""
        self.existing, self.done = {}, {}
        for run in self.tracker.children(self.parent_id):
            rank = run.data.params.get("rank", run.data.tags.get("dyrank.rank"))  # the tag: a run whose params never landed
            kind = run.data.tags.get("dyrank.kind")
            key = (kind, run.info.run_name if kind == "baseline" else int(rank) if rank is not None else None)
            self.existing[key] = run
            if run.info.status == "FINISHED":
                row = {"rank": int(rank) if rank is not None else None, **run.data.metrics}
                if kind == "baseline":
                    row.update(method=run.data.params.get("method"), job=run.info.run_name)
                self.done[key] = Recorded(run.info.run_id, row)

    def _record(self, kind: str, rank: int | None, name: str, reply: dict, metrics: dict, series: list[dict] = (),
                method: str | None = None):
        """Create (or reuse, if an interrupted driver left it unfinished) the child run for one result;
        baselines are keyed by their job name (two methods may share a rank)."""
        key = (kind, name if kind == "baseline" else rank)
        existing = self.existing.get(key)
        if existing is not None and existing.info.status != "RUNNING":
            existing = None
        tags = {"dyrank.actor_id": reply.get("actor_id"), "dyrank.node_id": reply.get("node_id"),
                "dyrank.gpu_ids": ",".join(reply.get("gpu_ids", []))}
        method = method or {"zeroshot": "base"}.get(kind, self.cfg.adapter.method)
        params = {"method": method}
        if rank is not None:
            # Also a tag, written with the run itself: a driver killed before the params were written
            # leaves a run that `dyrank resume` still recognises (and completes) instead of duplicating.
            params["rank"] = tags["dyrank.rank"] = rank
        if existing is not None:
            run_id = existing.info.run_id
            self.tracker.set_tags(run_id, tags)
        else:
            run_id = self.tracker.create_run(self.experiment_id, kind, name, self.parent_id, None, tags, reply.get("start"))
        if series:
            self.tracker.log_series(run_id, series, TRAIN_SERIES.values())
        self.tracker.log(run_id, params, metrics)  # on a reused run: the same values again, which MLflow accepts
        self.tracker.finish(run_id, reply.get("end"))
        row = {"rank": rank, **metrics}
        if kind == "baseline":
            row.update(method=method, job=name)
        self.done[key] = Recorded(run_id, row)
        return run_id

    # ---- 1. trainers -----------------------------------------------------------------------------
    def launch_trainers(self) -> dict:
        """Start every unfinished training job at once; Ray runs them in parallel as resources allow.
        Keys: ("train", rank) for the main job, ("baseline", job name) for the others."""
        jobs = {}
        wanted = [("train", self.cfg.adapter.full_rank, "train", self.config_dict)]
        self.job_specs = {name: (method, rank) for name, method, rank, _ in self.cfg.baseline_jobs()}
        wanted += [("baseline", name, f"baseline-{name}", job) for name, _, _, job in self.cfg.baseline_jobs()]
        for kind, key, job, job_config in wanted:
            if (kind, key) in self.done:
                continue
            options = actor_options(self.cfg, "trainer")
            actor = Trainer.options(name=f"Trainer-{self.parent_id[:12]}-{job}", **options).remote(
                job_config, options["num_cpus"])
            self.actors.append(actor)
            out = self.workdir / job
            evaluate_on, sink = (("validation", "test"), None) if kind == "baseline" else ((), self.step_sink)
            jobs[(kind, key)] = (actor, actor.train.remote(str(out), evaluate_on, sink))
        return jobs

    def _release(self, actor) -> None:
        """A finished trainer gives its CPUs/GPU back at once, so evaluators waiting for them can start."""
        ray.kill(actor, no_restart=True)
        self.actors.remove(actor)

    def _finish_baseline(self, key: tuple, baseline_jobs: dict) -> None:
        """Record a finished baseline job and give its trainer's resources back."""
        actor, ref = baseline_jobs.pop(key)
        self.record_baseline(key[1], self._get(ref, "baseline", self.job_specs[key[1]][1]))
        self._release(actor)

    def finish_training(self, job, baseline_jobs: dict) -> tuple[str, object]:
        """Wait for the QDyLoRA training, record it, and put its adapter in the object store.
        The adapter is logged before the run is marked FINISHED, so a finished run always has one.
        Baselines that finish first are recorded and their GPUs freed meanwhile: with fewer cards than
        trainers, the QDyLoRA trainer may be waiting for one of theirs."""
        rank = self.cfg.adapter.full_rank
        if job is None:  # finished before an interruption: the adapter is in MLflow
            files = read_adapter_files(self.tracker.download(self.parent_id, "adapter", self.workdir / "downloaded"))
        else:
            actor, ref = job
            while baseline_jobs:
                [first], _ = ray.wait([ref, *(r for _, r in baseline_jobs.values())], num_returns=1)
                if first == ref:
                    break
                self._finish_baseline(next(k for k, (_, r) in baseline_jobs.items() if r == first), baseline_jobs)
            reply = self._get(ref, "train", rank)
            self._release(actor)
            files = reply.pop("adapter_files")
            folder = self.workdir / "adapter"
            folder.mkdir(exist_ok=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
            self.tracker.log_artifact(self.parent_id, folder, "adapter")
            metrics = {**_costs(reply), "final_train_loss": reply["final_loss"], "resumed_from_step": reply["resumed_from"]}
            self._record("train", rank, "qdylora-train", reply, metrics, _metric_rows(reply["metrics"]))
            self.on_event("trained", reply)
        return f"{self.parent_id}-adapter", ray.put(files)

    def _get(self, ref, kind: str, rank: int | None):
        try:
            return ray.get(ref)
        except (RayTaskError, RayActorError) as exc:
            reason = str(exc).strip().splitlines()[-1][:2000] if str(exc).strip() else type(exc).__name__
            run_id = self.tracker.create_run(self.experiment_id, kind, f"{kind}-failed", self.parent_id,
                                             {"rank": rank} if rank is not None else None)
            self.tracker.fail(run_id, reason)
            raise PipelineError(f"{kind} (rank {rank}) failed: {reason}") from None

    # ---- 2. evaluators ---------------------------------------------------------------------------
    def pool_size(self, num_ranks: int) -> int:
        r = self.cfg.resources
        if r.num_evaluators:
            return min(r.num_evaluators, num_ranks)
        total = ray.cluster_resources()
        fits = [total.get("CPU", 1) / r.evaluator_cpus]
        if r.evaluator_gpus:
            fits.append(total.get("GPU", 0) / r.evaluator_gpus)
        return max(1, min(num_ranks, math.floor(min(fits))))

    def evaluator_name(self, index: int) -> str:
        return f"RankEvaluator-{self.parent_id[:12]}-{index}"  # findable in `ray list actors`

    def start_evaluators(self, n: int) -> list:
        options = actor_options(self.cfg, "evaluator")
        pool = [RankEvaluator.options(name=self.evaluator_name(i), **options).remote(self.config_dict, options["num_cpus"])
                for i in range(n)]
        self.actors += pool
        return pool

    # ---- 3. sweep --------------------------------------------------------------------------------
    def record_baseline(self, name: str, reply: dict) -> None:
        """One baseline job's run: params method and rank, its scores and costs, its method's records."""
        reply.pop("adapter_files", None)
        method, rank = self.job_specs[name]
        metrics = {**reply["scores"], **_costs(reply), "final_train_loss": reply["final_loss"]}
        run_id = self._record("baseline", rank, name, reply, metrics, _metric_rows(reply["metrics"]), method=method)
        for artifact, data in reply.get("artifacts", {}).items():
            self.tracker.log_text(run_id, json.dumps(data, indent=2), f"{artifact}.json")  # buffered, like every write

    def sweep(self, pool: list, adapter_key: str, files_ref, baseline_jobs: dict, zeroshot_ref=None) -> list[dict]:
        """Spread the unrecorded ranks over the pool and record each result the moment it arrives;
        baselines still training and the zero-shot score are collected in the same loop, so no finished
        work waits on another. (Waiting for the zero-shot score first could deadlock: its evaluator may be
        waiting for the GPU a finished baseline trainer holds until its result is collected here.)"""
        results = {rank: done.row for (kind, rank), done in self.done.items() if kind == "eval"}
        pending = deque(r for r in self.cfg.eval_ranks() if r not in results)
        # An evaluator gets work only once it is up: one still waiting for resources would sit on it.
        waiting = {a.stats.remote(): ("ready", a, None) for a in pool}
        waiting.update({ref: ("baseline", actor, name) for (_, name), (actor, ref) in baseline_jobs.items()})
        if zeroshot_ref is not None:
            waiting[zeroshot_ref] = ("zeroshot", pool[0], None)
        idle, failures, alive = [], Counter(), len(pool)
        while pending or waiting:
            while pending and idle:
                actor, rank = idle.pop(), pending.popleft()
                waiting[actor.evaluate_rank.remote(rank, "validation", adapter_key, [files_ref])] = ("eval", actor, rank)
            if not waiting:
                raise PipelineError(f"every evaluator died; ranks left: {list(pending)}")
            [ref], _ = ray.wait(list(waiting), num_returns=1)
            what, actor, rank = waiting.pop(ref)
            if what == "baseline":  # `rank` holds the job's name here
                self._finish_baseline(("baseline", rank), baseline_jobs)
                continue
            if what == "zeroshot":
                reply = self._get(ref, "zeroshot", None)
                self._record("zeroshot", None, "zeroshot", reply, _scalars(reply))
                continue
            try:
                row = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                if isinstance(exc, ActorDiedError):
                    alive -= 1  # restarts used up; its work goes to the others
                else:
                    idle.append(actor)  # the actor lives: only the task failed
                if what == "eval":
                    failures[rank] += 1
                    if failures[rank] > self.cfg.resources.max_restarts or alive == 0:
                        raise PipelineError(f"rank {rank} failed {failures[rank]} times: {str(exc).splitlines()[-1]}") from None
                    pending.appendleft(rank)
                continue
            idle.append(actor)
            if what == "ready" or rank in results:  # a duplicate from a retry: the first result stands
                continue
            self._record("eval", rank, f"rank-{rank}", row, _scalars(row))
            results[rank] = row
            self.on_event("eval", row)
        return [results[r] for r in sorted(results)]

    # ---- the whole thing -------------------------------------------------------------------------
    def run(self) -> PipelineResult:
        self._load_existing()
        cfg = self.cfg
        started = time.time()
        jobs = self.launch_trainers()
        ranks_to_do = cfg.eval_ranks()
        pool = self.start_evaluators(self.pool_size(len(ranks_to_do)))

        zeroshot_ref = None
        if ("zeroshot", None) not in self.done:
            zeroshot_ref = pool[0].evaluate_base.remote("validation")
        baseline_jobs = {key: job for key, job in jobs.items() if key[0] == "baseline"}
        adapter_key, files_ref = self.finish_training(jobs.get(("train", cfg.adapter.full_rank)), baseline_jobs)
        ranks = self.sweep(pool, adapter_key, files_ref, baseline_jobs, zeroshot_ref)
        zeroshot = self.done[("zeroshot", None)].row
        baselines = [self.done[("baseline", name)].row for name, *_ in cfg.baseline_jobs()]

        s = cfg.selection
        selected = select_rank(ranks, s.metric, s.policy, s.tolerance, s.greater_is_better)
        test = ray.get(pool[0].evaluate_rank.remote(selected["rank"], "test", adapter_key, [files_ref], True, True))
        test_metrics = {k: v for k, v in test.items() if k.startswith("test_")}
        self.tracker.log_metrics(self.done[("eval", selected["rank"])].run_id, test_metrics)
        stats = ray.get([a.stats.remote() for a in pool])
        self.tracker.set_tags(self.parent_id, {"dyrank.evaluator_base_loads": json.dumps(
            {s["actor_id"]: s["base_loads"] for s in stats})})
        return self.summarize(ranks, baselines, selected, test_metrics, zeroshot, started)

    # ---- 5. summarize ----------------------------------------------------------------------------
    def summarize(self, ranks, baselines, selected, test_metrics, zeroshot, started) -> PipelineResult:
        metric = self.cfg.selection.metric
        best_baseline = min(baselines, key=lambda b: b[metric]) if baselines else None
        parent = {
            "best_rank": selected["rank"], f"best_{metric}": selected[metric],
            "train_device_seconds": self.done[("train", self.cfg.adapter.full_rank)].row["device_seconds"],
            "baseline_device_seconds": sum(b.get("device_seconds", 0.0) for b in baselines),
            "eval_device_seconds": sum(r.get("seconds", 0.0) for r in ranks),
            "pipeline_wall_seconds": time.time() - started,
            **{f"selected_{k}": v for k, v in test_metrics.items()},
            **{f"zeroshot_{k}": v for k, v in zeroshot.items() if k.startswith("eval_")},
        }
        if best_baseline is not None:
            parent[f"best_baseline_{metric}"] = best_baseline[metric]
            parent["best_baseline_rank"] = best_baseline["rank"]
            self.tracker.set_tags(self.parent_id, {"dyrank.best_baseline": best_baseline.get("job", "")})
            parent[f"{metric}_minus_best_baseline"] = selected[metric] - best_baseline[metric]
            for b in baselines:
                job = b["job"].replace("-", "_").replace(".", "_")
                parent.update({f"{job}_{k}": v for k, v in b.items() if k.startswith("test_")})
        self.tracker.log_metrics(self.parent_id, parent)
        out = self.workdir / "report"
        out.mkdir(exist_ok=True)
        plot_ranks(ranks, baselines, selected["rank"], out / "rank_vs_metric.png", metric, zeroshot)
        write_rank_csv(ranks, baselines, out / "ranks.csv")
        trained = {"method": self.cfg.adapter.method, **self.done[("train", self.cfg.adapter.full_rank)].row}
        table = summary_table(ranks, baselines, selected["rank"], metric, self.cfg.adapter.method) + "\n\n" + cost_table([trained, *baselines])
        (out / "summary.txt").write_text(table + "\n")
        self.tracker.log_artifact(self.parent_id, out, "report")
        return PipelineResult(self.parent_id, selected["rank"], ranks, baselines, table)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


# ---- entry points: `dyrank run` and `dyrank resume` ------------------------------------------------
def _preflight(cfg) -> tuple[Tracker, dict]:
    """Everything that can be known before an actor starts: data readable, actors fit their declared GPU
    memory, tracking store reachable."""
    if in_ray_job() and not os.environ.get("MLFLOW_TRACKING_URI") and not (
        cfg.tracking.uri and is_durable_in_ray_job(cfg.tracking.uri)
    ):
        raise PipelineError(
            "inside a Ray job the working folder is temporary, so a default ./mlflow.db would vanish; pass one: "
            "--runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"sqlite:////abs/path/mlflow.db\"}}'"
        )
    splits = load_splits(cfg.data)
    for name in ("train", "validation", "test"):
        if not splits[name]:
            raise PipelineError(f"data: the {name} split is empty; add records or adjust data.{name}_fraction")
    if cfg.resources.gpu_budget_gb() is not None:
        from orchestrator.plan import check_fits

        check_fits(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    check_reachable(uri)
    ray_runtime.check_reachable(cfg.resources.ray_address)
    fingerprints = {f"data.{name}.{k}": v for name, records in splits.items() for k, v in split_fingerprint(records).items()}
    return MlflowTracker(uri), fingerprints


def _execute(cfg, tracker: Tracker, parent_id: str, on_event, step_sink=None) -> PipelineResult:
    pipeline = None
    tracker = BufferedTracker(tracker, cfg.tracking.max_outage_seconds)  # a tracking outage pauses recording, not work
    try:
        ray_runtime.connect(cfg.resources.ray_address)
        pipeline = Pipeline(cfg, tracker, parent_id, on_event, step_sink)
        result = pipeline.run()
        tracker.finish(parent_id)
        tracker.flush()  # success only once every result is in the store
        return result
    except KeyboardInterrupt:
        tracker.set_tags(parent_id, {"dyrank.failure_reason": f"interrupted; continue with: dyrank resume {parent_id}"})
        tracker.terminate(parent_id, "KILLED")
        raise
    except Exception as exc:
        tracker.fail(parent_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if pipeline is not None:
            pipeline.shutdown()
        tracker.close()


def run_pipeline(cfg, on_event=None, *, nest_under: str | None = None, tags: dict | None = None,
                 step_sink=None) -> PipelineResult:
    """nest_under: a run (an Optuna study's) this pipeline's run is nested under; tags: extra tags on it;
    step_sink: sees the QDyLoRA training's per-step metrics and may stop it (see Trainer.train)."""
    on_event = on_event or (lambda kind, payload: None)
    tracker, fingerprints = _preflight(cfg)
    experiment = tracker.experiment_id(cfg.tracking.experiment or cfg.name)
    parent_id = tracker.create_run(experiment, "pipeline", cfg.name, nest_under,
                                   params={**cfg.model_dump(mode="json"), **fingerprints},
                                   tags={"dyrank.config_name": cfg.name, **(tags or {})})
    tracker.log_text(parent_id, cfg.to_yaml(), "config.yaml")
    on_event("started", {"parent_run_id": parent_id, "tracking_uri": tracker.uri})
    return _execute(cfg, tracker, parent_id, on_event, step_sink)


def resume_pipeline(parent_id: str, tracking_uri: str | None = None, on_event=None) -> PipelineResult | None:
    """Finish an interrupted pipeline: recorded work is kept, the rest is done once. None if it had finished."""
    on_event = on_event or (lambda kind, payload: None)
    tracker, parent = open_run(parent_id, tracking_uri)
    if parent.data.tags.get("dyrank.kind") != "pipeline":
        raise PipelineError(f"run {parent_id} is not a dyrank pipeline run")
    if parent.info.status == "FINISHED":
        return None
    text = (Path(tracker.download(parent_id, "config.yaml", cache_dir("pipelines", parent_id)))).read_text()
    cfg = parse_config(yaml.safe_load(text), f"config.yaml of run {parent_id}")
    _preflight(cfg)
    tracker.reopen(parent_id)
    on_event("started", {"parent_run_id": parent_id, "tracking_uri": tracker.uri})
    return _execute(cfg, tracker, parent_id, on_event)
