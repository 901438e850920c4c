"""The pipeline: one QDyLoRA training, baselines of any method beside it, every rank evaluated, one selected.

Stages, in the order `Pipeline.run` calls them:
  1. trainers   one Ray actor per training job (QDyLoRA + each baseline job: QLoRA ranks and
                baselines.methods), launched together; a baseline scores itself once, at its rank
  2. evaluators a pool reserved once the adapter exists (not while training runs: see Pipeline.run)
  3. sweep      the base model (zero-shot) and every rank of the QDyLoRA adapter scored on validation, results
                streamed back (orchestrator/sweep_stage.py: groups of ranks queued on each evaluator; an
                evaluator is released the moment no work is left for it)
  4. select     the policy picks a rank on validation; the selected rank is scored on test
  5. fidelity   with 2+ QLoRA ranks the sweep covers, each one-run method against that grid (fidelity_stage.py)
  6. summarize  parent metrics; the result's rows go back to the caller (the CLI draws table, CSV and plot)
The driver is MLflow's only writer; orchestrator/run_records.py keeps the child runs, so a resumed
pipeline (`dyrank resume`) finds finished work as finished runs and never records anything twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray.exceptions import RayActorError, RayTaskError

from orchestrator import ray_runtime, tags
from orchestrator.actors import Trainer, actor_options, read_adapter_files, write_adapter_files
from orchestrator.buffered_tracking import BufferedTracker
from orchestrator.cache import mark_finished
from orchestrator.config import Config, parse_config
from orchestrator.errors import PipelineError
from orchestrator.fidelity_stage import FidelityStage, fidelity_grid
from orchestrator.messages import EvalResult, JobKey, TrainingReply
from orchestrator.mlflow_assets import dataset_inputs, publish_selected
from orchestrator.provenance import provenance_tags
from orchestrator.reservations import Reservations, phase_threads
from orchestrator.redact import is_redacted, redact
from orchestrator.resume_checks import check_resumed_config
from orchestrator.sweep_stage import ZEROSHOT, SweepStage
from orchestrator.ray_runtime import in_ray_job
from orchestrator.run_progress import TeeSink
from orchestrator.run_records import RunRecords
from orchestrator.tracking import MlflowTracker, Tracker, check_reachable, open_run, resolve_tracking_uri
from orchestrator.tracking_uri import is_durable_in_ray_job
from trainers.datasets.splits import load_splits, split_fingerprint
from trainers.hub import is_hub_id, resolve_hub_model
from trainers.paths import cache_dir



@dataclass
class PipelineResult:
    """What a pipeline produced, as data: the caller decides how to show it."""

    parent_run_id: str
    method: str  # the main training's method
    metric: str  # the selection metric (validation)
    selected_rank: int
    ranks: list[dict]  # one row per swept rank: {"rank", eval_* metrics, "seconds"}
    baselines: list[dict]  # one row per baseline job: {"rank", "method", "job", scores and costs}
    trained: dict  # the main training's row: {"rank", "method", costs}
    zeroshot: dict  # the base model's validation scores
    test_metrics: dict  # the selected rank on test
    selection: dict = field(default_factory=dict)  # smallest-not-worse: the paired interval it rests on (not_worse_*)
    fidelity: dict | None = None  # {"grid", "methods": {method: block}} (evaluators/fidelity.py), when there is a grid
    table: str = ""  # the summary table, when an outputs writer drew one
    outputs: list[Path] = field(default_factory=list)  # what it wrote (logged under the parent's report/)


# Draws the pipeline's outputs (table, CSV, plot) into a folder and returns the table; the CLI passes dashboards'.
OutputsWriter = Callable[[PipelineResult, Path], str]


class Pipeline(SweepStage, FidelityStage):
    def __init__(self, cfg: Config, tracker: Tracker, parent_id: str, on_event: Callable[[str, dict], None] | None = None,
                 step_sink=None, write_outputs: OutputsWriter | None = None, progress=None):
        self.cfg, self.tracker, self.parent_id, self.step_sink = cfg, tracker, parent_id, step_sink
        self.write_outputs = write_outputs
        self.progress = progress  # orchestrator/run_progress.py RunProgress: every training job's steps, live
        self.on_event = on_event or (lambda kind, payload: None)
        self.workdir = cache_dir("pipelines", parent_id)
        self.job = cfg.job()
        self.main_key = JobKey("train", cfg.adapter.full_rank)
        self.baselines = {job.name: job for job in cfg.baseline_jobs()}  # validated once, with the config
        self.records = RunRecords(tracker, tracker.run(parent_id).info.experiment_id, parent_id)
        self.actors: list = []
        self.evaluators: list = []  # the live ones: one that died for good (restarts used up) or was released leaves
        self.base_loads: dict[str, int] = {}  # evaluator actor id -> times it loaded the base, read as it goes
        self.trainer_threads: dict = {}  # trainer actor -> the torch threads it was last given (share_cores)
        self.baseline_jobs: dict[JobKey, tuple] = {}  # baselines still training: key -> (actor, ref of its reply)
        self.reservations = Reservations()  # what each actor holds and uses: threads, idle device-seconds
        self.init_fidelity()  # per-example store; qlora-svd baselines made from a grid job's training

    # ---- 1. trainers -----------------------------------------------------------------------------
    def launch_trainers(self) -> dict[JobKey, tuple]:
        """Start every unfinished training job at once; Ray runs them in parallel as resources allow."""
        wanted = [(self.main_key, "train", self.job)]
        wanted += [(JobKey("baseline", name), f"baseline-{name}", job.config) for name, job in self.baselines.items()]
        wanted = [(key, folder, job) for key, folder, job in wanted if key not in self.records
                  and not self.made_from_grid(key)]  # made when the grid job it stands on finishes
        threads = phase_threads(len(wanted))  # the training phase's jobs share the cores
        jobs = {}
        for key, folder, job in wanted:
            options = actor_options(self.cfg, "trainer")
            actor = Trainer.options(name=f"Trainer-{self.parent_id[:12]}-{folder}", **options).remote(job, options["num_cpus"])
            self.actors.append(actor)
            self.trainer_threads[actor] = threads
            self.reservations.add(f"trainer_{folder}", actor, options)
            evaluate_on, sink = (("validation", "test"), None) if key.kind == "baseline" else ((), self.step_sink)
            if self.progress is not None:
                label = key.id if key.kind == "baseline" else self.cfg.adapter.method  # qdylora, qlora-r2, ...
                sink = TeeSink(sink, self.progress.sink(label, job.training.max_steps))
            jobs[key] = (actor, actor.train.remote(str(self.workdir / folder), evaluate_on, sink, threads,
                                                   *self.scoring_args(key)))
        return jobs

    def _release(self, actor) -> None:
        """A finished trainer (or an evaluator with no work left) gives its CPUs/GPU back at once, so actors
        waiting for them can start and no reservation is held idle; its usage is read first."""
        self.reservations.read(self.reservations.label_of(actor))
        ray.kill(actor, no_restart=True)
        self.actors.remove(actor)
        self.share_cores()

    def share_cores(self) -> int:
        """Threads follow cores: every live actor's job shares the cluster's CPUs. Trainers still running are
        told their share at once (they apply it between two steps), so the last one training uses the cores
        the finished ones left; evaluators get it with their next task. Returns the share."""
        trainers = [a for a in self.trainer_threads if a in self.actors]  # those still training
        threads = phase_threads(len(trainers) + len(self.evaluators))
        for actor in trainers:
            if self.trainer_threads[actor] != threads:
                actor.set_threads.remote(threads)  # no reply awaited: a trainer that died has nothing to apply
                self.trainer_threads[actor] = threads
        return threads

    def _finish_baseline(self, key: JobKey) -> None:
        """Record a finished baseline job and give its trainer's resources back."""
        actor, ref = self.baseline_jobs.pop(key)
        reply = self._get(ref, "baseline", self.baselines[key.id].rank)
        self._release(actor)  # its reservation ends with its work, not once the driver has recorded it
        self.record_baseline(key.id, reply)

    def finish_baselines(self, until=None) -> None:
        """Record baseline jobs as they finish, each trainer released at once (none idles on its reservation
        while the driver waits on something else): all of them, or (`until`: a task's ref) those that finish
        before that task does."""
        while self.baseline_jobs:
            refs = [r for _, r in self.baseline_jobs.values()]
            [first], _ = ray.wait([*([until] if until is not None else []), *refs], num_returns=1)
            if first == until:
                return
            self._finish_baseline(next(k for k, (_, r) in self.baseline_jobs.items() if r == first))

    def finish_training(self, job) -> tuple[str, object]:
        """Wait for the main training, record it, and put its adapter in the object store.
        The adapter is logged before the run is marked FINISHED, so a finished run always has one.
        Baselines that finish first are recorded and their GPUs freed meanwhile: with fewer cards than
        trainers, the main trainer may be waiting for one of theirs."""
        if job is None:  # finished before an interruption: the adapter is in MLflow
            files = read_adapter_files(self.tracker.download(self.parent_id, "adapter", self.workdir / "downloaded"))
        else:
            actor, ref = job
            self.finish_baselines(until=ref)
            reply: TrainingReply = self._get(ref, "train", self.main_key.id)
            self._release(actor)
            files = reply.adapter_files
            self.tracker.log_artifact(self.parent_id, write_adapter_files(files, self.workdir / "adapter"), "adapter")
            metrics = {**reply.costs.metrics(), "final_train_loss": reply.final_loss, "resumed_from_step": reply.resumed_from}
            method = self.cfg.adapter.method
            self.records.record(self.main_key, f"{method}-train", method, self.main_key.id, reply.placement, reply.start,
                                reply.end, metrics, reply.step_rows, {"torch_threads": reply.torch_threads})
            self.on_event("trained", {"device_seconds": reply.costs.device_seconds, "steps": reply.steps})
        return f"{self.parent_id}-adapter", ray.put(files)

    def _get(self, ref, kind: str, rank: int | None):
        try:
            return ray.get(ref)
        except (RayTaskError, RayActorError) as exc:
            reason = str(exc).strip().splitlines()[-1][:2000] if str(exc).strip() else type(exc).__name__
            self.records.record_failure(kind, rank, reason)
            raise PipelineError(f"{kind} (rank {rank}) failed: {reason}") from None

    # ---- 3. sweep --------------------------------------------------------------------------------
    def record_baseline(self, name: str, reply: TrainingReply) -> None:
        """One baseline job's run: params method and rank, its scores and costs, its method's records."""
        job = self.baselines[name]
        metrics = {**reply.scores, **reply.costs.metrics(), "final_train_loss": reply.final_loss}
        run_id = self.records.record(JobKey("baseline", name), name, job.method, job.rank, reply.placement,
                                     reply.start, reply.end, metrics, reply.step_rows, {"torch_threads": reply.torch_threads})
        for artifact, data in reply.artifacts.items():
            self.tracker.log_text(run_id, json.dumps(data, indent=2), f"{artifact}.json")  # buffered, like every write
        self.record_scores_of(name, run_id, reply)  # per-example values, curves, a baseline made from this one

    def _record_eval(self, result: EvalResult) -> None:
        key = JobKey("eval", result.rank) if result.rank is not None else ZEROSHOT
        name, method = (f"rank-{result.rank}", self.cfg.adapter.method) if result.rank is not None else ("zeroshot", "base")
        self.records.record(key, name, method, result.rank, result.placement, result.start, result.end, result.metrics(),
                            params={"torch_threads": result.torch_threads})
        self.per_example.put(key, "validation", result.per_example)

    # ---- the whole thing -------------------------------------------------------------------------
    def run(self) -> PipelineResult:
        self.records.load()
        cfg = self.cfg
        started = time.time()
        jobs = self.launch_trainers()
        self.baseline_jobs = {key: job for key, job in jobs.items() if key.kind == "baseline"}
        adapter_key, files_ref = self.finish_training(jobs.get(self.main_key))
        # The pool is reserved only now that the adapter exists. Started beside the trainers, it held its
        # devices through the whole training for one zero-shot forward (0.57 of the tiny pipeline's reserved
        # device-seconds idle); the zero-shot score is now the sweep's first task, which costs one base
        # forward of wall time after training, and the base loads no longer overlap training.
        pool = self.start_evaluators(self.pool_size(len(cfg.eval_ranks())))
        ranks = self.sweep(pool, adapter_key, files_ref, zeroshot=ZEROSHOT not in self.records)

        selected = self.select(ranks)  # the sweep left one evaluator up, for the test scoring
        test_metrics = self.score_test([selected["rank"]], adapter_key, files_ref, full=True)[selected["rank"]]
        if len(fidelity_grid(cfg)) >= 2:  # the grid's test scores: the evaluators' last work (self.fidelity reuses them)
            self.score_test(fidelity_grid(cfg), adapter_key, files_ref)
        for actor in list(self.evaluators):
            self.release_evaluator(actor)
        self.finish_baselines()  # those still training after the sweep
        fidelity = self.fidelity(ranks, selected["rank"], adapter_key, files_ref)
        self.tracker.set_tags(self.parent_id, {tags.EVALUATOR_BASE_LOADS_TAG: json.dumps(self.base_loads)})
        self.reservations.read_all()
        self.tracker.log_metrics(self.parent_id, self.reservations.metrics())
        result = self.summarize(ranks, selected, test_metrics, started, fidelity)
        publish_selected(self.tracker, self.parent_id, cfg, self.workdir, result.selected_rank)  # card, pyfunc, registry
        return result

    # ---- 5. summarize ----------------------------------------------------------------------------
    def summarize(self, ranks: list[dict], selected: dict, test_metrics: dict, started: float,
                  fidelity: dict | None = None) -> PipelineResult:
        metric = self.cfg.selection.metric
        baselines = [self.records[JobKey("baseline", name)].row for name in self.baselines]
        zeroshot = self.records[ZEROSHOT].row
        trained = {"method": self.cfg.adapter.method, **self.records[self.main_key].row}
        parent = {
            "best_rank": selected["rank"], f"best_{metric}": selected[metric],
            "train_device_seconds": trained["device_seconds"],
            "baseline_device_seconds": sum(b.get("device_seconds", 0.0) for b in baselines),
            "eval_device_seconds": sum(r.get("seconds", 0.0) for r in ranks),
            "pipeline_wall_seconds": time.time() - started,
            **{f"selected_{k}": v for k, v in test_metrics.items()},
            **{f"zeroshot_{k}": v for k, v in zeroshot.items() if k.startswith("eval_")},
        }
        evidence = {k: v for k, v in selected.items() if k.startswith("not_worse_")}  # smallest-not-worse's interval
        parent.update({f"selection_{k}": v for k, v in evidence.items()})
        best_baseline = min(baselines, key=lambda b: b[metric]) if baselines else None
        if best_baseline is not None:
            parent[f"best_baseline_{metric}"] = best_baseline[metric]
            parent["best_baseline_rank"] = best_baseline["rank"]
            self.tracker.set_tags(self.parent_id, {tags.BEST_BASELINE_TAG: best_baseline.get("job", "")})
            parent[f"{metric}_minus_best_baseline"] = selected[metric] - best_baseline[metric]
            for b in baselines:
                job = b["job"].replace("-", "_").replace(".", "_")
                parent.update({f"{job}_{k}": v for k, v in b.items() if k.startswith("test_")})
        self.tracker.log_metrics(self.parent_id, parent)
        result = PipelineResult(self.parent_id, self.cfg.adapter.method, metric, selected["rank"], ranks, baselines,
                                trained, zeroshot, test_metrics, evidence, fidelity)
        if self.write_outputs is not None:
            folder = self.workdir / "report"
            folder.mkdir(exist_ok=True)
            result.table = self.write_outputs(result, folder)
            result.outputs = sorted(p for p in folder.iterdir() if p.is_file())
            self.tracker.log_artifact(self.parent_id, folder, "report")
        return result

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
    if is_hub_id(cfg.model.source):  # an uncached Hub model is bad input: say so before any actor starts
        resolve_hub_model(cfg.model.source)
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


def _execute(cfg, tracker: Tracker, parent_id: str, on_event, step_sink=None,
             write_outputs: OutputsWriter | None = None, progress=None) -> PipelineResult:
    pipeline = None
    tracker = BufferedTracker(tracker, cfg.tracking.max_outage_seconds)  # a tracking outage pauses recording, not work
    try:
        ray_runtime.connect(cfg.resources.ray_address)
        pipeline = Pipeline(cfg, tracker, parent_id, on_event, step_sink, write_outputs, progress)
        result = pipeline.run()
        tracker.finish(parent_id)
        tracker.flush()  # success only once every result is in the store
        try:  # retention: checkpoints go, final adapters stay (orchestrator/cache.py); the run itself is done
            mark_finished(pipeline.workdir)
        except OSError as exc:
            print(f"note: could not trim {pipeline.workdir} ({exc}); `dyrank cache prune` can later", file=sys.stderr)
        return result
    except KeyboardInterrupt:
        tracker.set_tags(parent_id, {tags.FAILURE_TAG: f"interrupted; continue with: dyrank resume {parent_id}"})
        tracker.terminate(parent_id, "KILLED")
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        tracker.fail(parent_id, reason)
        if isinstance(exc, OSError):  # a full disk, a permission: FAILED with the reason, one line for the CLI
            raise PipelineError(f"pipeline run {parent_id} failed: {reason}") from exc  # --debug shows where
        raise
    finally:
        if pipeline is not None:
            pipeline.shutdown()
        tracker.close()


def run_pipeline(cfg: Config, on_event=None, *, nest_under: str | None = None, run_tags: dict | None = None,
                 step_sink=None, write_outputs: OutputsWriter | None = None, progress=None) -> PipelineResult:
    """nest_under: a run (an Optuna study's) this pipeline's run is nested under; run_tags: extra tags on it;
    step_sink: sees the main training's per-step metrics and may stop it (see Trainer.train);
    write_outputs: draws the summary table, CSV and plot (the CLI passes dashboards');
    progress: a RunProgress (orchestrator/run_progress.py) that shows every training job's steps live."""
    on_event = on_event or (lambda kind, payload: None)
    tracker, fingerprints = _preflight(cfg)
    experiment = tracker.experiment_id(cfg.tracking.experiment or cfg.name)
    parent_id = tracker.create_run(experiment, "pipeline", cfg.name, nest_under,
                                   params={**cfg.model_dump(mode="json"), **fingerprints},
                                   tags={tags.CONFIG_NAME_TAG: cfg.name, **provenance_tags(), **(run_tags or {})})
    tracker.log_text(parent_id, cfg.to_yaml(), "config.yaml")
    tracker.log_inputs(parent_id, dataset_inputs(cfg.data, fingerprints))
    on_event("started", {"parent_run_id": parent_id, "tracking_uri": redact(tracker.uri)})
    return _execute(cfg, tracker, parent_id, on_event, step_sink, write_outputs, progress)


def resume_pipeline(parent_id: str, tracking_uri: str | None = None, on_event=None,
                    write_outputs: OutputsWriter | None = None, allow_remote_code: bool = False,
                    progress=None) -> PipelineResult | None:
    """Finish an interrupted pipeline: recorded work is kept, the rest is done once. None if it had finished.
    The config read back from the store is checked again (orchestrator/resume_checks.py)."""
    on_event = on_event or (lambda kind, payload: None)
    tracker, parent = open_run(parent_id, tracking_uri)
    if parent.data.tags.get(tags.KIND_TAG) != "pipeline":
        raise PipelineError(f"run {parent_id} is not a dyrank pipeline run")
    if parent.info.status == "FINISHED":
        return None
    text = (Path(tracker.download(parent_id, "config.yaml", cache_dir("pipelines", parent_id)))).read_text()
    cfg = parse_config(yaml.safe_load(text), f"config.yaml of run {parent_id}")
    check_resumed_config(cfg, parent_id, allow_remote_code)
    if is_redacted(cfg.tracking.uri):  # recorded without its password: the store this run was opened from
        cfg.tracking.uri = tracker.uri
    _preflight(cfg)
    tracker.reopen(parent_id)
    on_event("started", {"parent_run_id": parent_id, "tracking_uri": redact(tracker.uri)})
    return _execute(cfg, tracker, parent_id, on_event, write_outputs=write_outputs, progress=progress)
