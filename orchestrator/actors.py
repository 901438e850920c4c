"""Ray actors: trainers (one per training job) and rank evaluators (a pool, one base load each).

Actors take a `JobConfig` and return the typed messages of orchestrator/messages.py; they never touch MLflow
(the driver is the only writer). Adapters travel as file bytes through Ray's object store, so evaluators on
other nodes need no shared disk.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from orchestrator.messages import ActorUsage, EvalResult, Placement, TrainingReply
from orchestrator.provenance import provenance_tags
from trainers.atomic import read_jsonl_log, write_atomic
from trainers.config import JobConfig


def _threads(wanted: int | None, num_cpus: float) -> int:
    """Torch threads for one task: what the driver gives the task (the cores its phase leaves free, see
    Pipeline.share_cores), never fewer than the whole CPUs the actor reserved, never more than this node has."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, max(int(num_cpus), wanted or 0)))


def _placement() -> Placement:
    ctx = ray.get_runtime_context()
    return Placement(ctx.get_actor_id(), ctx.get_node_id(), os.getpid(),
                     tuple(str(g) for g in ctx.get_accelerator_ids().get("GPU", [])), provenance_tags())


def _free_accelerator_memory(collect: bool = False) -> None:
    """Long-lived actors that run many CUDA tasks leak cached blocks: release them after each task.
    A full gc pass costs ~0.2 s with torch and transformers loaded (10x a tiny model's eval), so it
    runs only after work that leaves reference cycles behind (a training run, an adapter swap)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_adapter_files(adapter_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(adapter_dir).iterdir() if p.is_file()}


def write_adapter_files(files: dict[str, bytes], folder: Path) -> Path:
    """The one place an adapter's files are written back from bytes (evaluators and the driver)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(folder / name, data)  # a full disk leaves no half-written adapter file behind
    return folder


def _harness_scores(job: JobConfig, session, rank: int) -> dict:
    """lm-evaluation-harness metrics (harness_<task>_<metric>) at `rank` on the session's loaded base; {} when
    the config names no harness task."""
    h = job.evaluation.harness
    if not h.tasks:
        return {}
    from evaluators.harness import session_scores

    return session_scores(session, rank, h.tasks, h.limit, h.batch_size)


class TrainingStopped(RuntimeError):
    """The driver asked a training to stop (an Optuna trial was pruned)."""


def _step_hook(step_sink):
    if step_sink is None:
        return None

    def hook(row: dict) -> None:
        if step_sink(row):
            raise TrainingStopped(f"stopped by the driver at step {row['step']} (trial pruned)")
    return hook


class _Worker:
    """Every actor keeps when it was placed and how long its tasks ran, so the driver can record the
    device-seconds it held but left idle (orchestrator/reservations.py)."""

    def __init__(self, job: JobConfig, num_cpus: float):
        self.placed_at = time.time()
        self.busy_seconds = 0.0
        self.num_cpus = num_cpus
        self.thread_target: int | None = None  # set by the driver while a task runs (set_threads)
        self.threads = self._use_threads(None)
        self.cfg = job

    def _use_threads(self, wanted: int | None) -> int:
        self.threads = _threads(wanted, self.num_cpus)
        torch.set_num_threads(self.threads)
        return self.threads

    def set_threads(self, threads: int) -> None:
        """The driver's new share of cores for this actor (other jobs finished, or started): a running training
        applies it between two steps, in its own thread (torch's thread count is per calling thread)."""
        self.thread_target = threads

    def usage(self) -> ActorUsage:
        return ActorUsage(_placement().actor_id, self.placed_at, time.time(), self.busy_seconds, self.threads)


@ray.remote(max_concurrency=2)  # a second slot, so set_threads reaches the actor while train() runs
class Trainer(_Worker):
    """Trains one job (the QDyLoRA run or one QLoRA baseline) into out_dir, resuming from its checkpoints,
    so a restarted actor picks up where the dead one stopped."""

    def train(self, out_dir: str, evaluate_on: tuple[str, ...] = (), step_sink=None, threads: int | None = None,
              sweep_ranks: tuple[int, ...] = (), svd_sweep: tuple[int, ...] | None = None,
              test_ranks=None) -> TrainingReply:
        """step_sink(row) -> bool, if given, sees every step's metrics; True stops the training (a pruned trial).
        threads: torch threads for this training (see _threads).
        sweep_ranks: a rank-dynamic baseline (qlora-svd) is also scored at these ranks on every split of
        evaluate_on. svd_sweep: this QLoRA run is also a qlora-svd baseline's training (no second run): its
        adapter is SVD-ordered and scored at these ranks, the reply's `derived`. test_ranks(validation values by
        rank) -> the swept ranks also scored on test (default: all of them)."""
        began = time.time()  # importing the training stack (seconds: transformers, peft) is work on the reservation
        from trainers.finetune import ARTIFACTS_FILE, METRICS_FILE, train

        started = time.time()
        self._use_threads(self.thread_target or threads)  # a target sent before this task began is the newer word
        ran_with: dict[int, int] = {}  # step -> the torch threads it ran with
        sink = _step_hook(step_sink)

        def on_step(row: dict) -> None:
            ran_with[row["step"]] = torch.get_num_threads()  # as torch sees it, in the thread that trains
            if sink is not None:
                sink(row)
            if self.thread_target and self.thread_target != self.threads:  # cores freed (or taken) meanwhile
                self._use_threads(self.thread_target)

        result = train(self.cfg, out_dir, on_step=on_step, progress=False)
        rows = read_jsonl_log(Path(out_dir) / METRICS_FILE)  # a torn last line (a kill mid-write) is dropped, not fatal
        for row in rows:  # steps before a resume ran in another process: their threads are unknown
            if row.get("step") in ran_with:
                row["torch_threads"] = ran_with[row["step"]]
        artifacts = Path(out_dir) / ARTIFACTS_FILE
        reply = TrainingReply(
            placement=_placement(), start=started, end=time.time(), steps=result.steps, final_loss=result.final_loss,
            resumed_from=result.resumed_from, costs=result.costs, step_rows=rows,
            artifacts=json.loads(artifacts.read_text()) if artifacts.exists() else {}, torch_threads=self.threads,
        )
        if evaluate_on:  # baselines score themselves with the evaluators' code, on their own run
            self._score(result.adapter_dir, evaluate_on, reply, sweep_ranks, test_ranks)
        else:  # the main job's adapter goes to the evaluators; a baseline's (full weights, for GaLore) stays here
            reply.adapter_files = read_adapter_files(result.adapter_dir)
        if svd_sweep is not None:
            reply.derived = self._svd_of(result.adapter_dir, Path(out_dir) / "svd", evaluate_on, svd_sweep, reply,
                                         test_ranks)
        _free_accelerator_memory(collect=True)
        self.busy_seconds += time.time() - began
        return reply

    def _svd_of(self, adapter_dir: Path, out_dir: Path, evaluate_on: tuple[str, ...], sweep: tuple[int, ...],
                trained: TrainingReply, test_ranks=None) -> TrainingReply:
        """The qlora-svd baseline made from this QLoRA run (trainers/methods/qlora_svd/model.py), scored at its
        full rank and every rank of `sweep`; its costs are this run's (the training it stands on) and its steps."""
        from trainers.methods.qlora_svd.model import svd_order_adapter

        started = time.time()
        svd_dir = svd_order_adapter(adapter_dir, out_dir)
        reply = TrainingReply(placement=trained.placement, start=started, end=started, steps=trained.steps,
                              final_loss=trained.final_loss, resumed_from=trained.resumed_from, costs=trained.costs,
                              step_rows=trained.step_rows, torch_threads=trained.torch_threads)
        self._score(svd_dir, evaluate_on, reply, sweep, test_ranks)
        reply.end = time.time()
        return reply

    def _score(self, adapter_dir: Path, splits: tuple[str, ...], reply: TrainingReply,
               sweep_ranks: tuple[int, ...] = (), test_ranks=None) -> None:
        """The baseline's scores at its rank (and per-example values) into `reply`; a rank-dynamic baseline's
        also at every rank of sweep_ranks (rank_scores, per_example "split@rank"), on test at those test_ranks
        picks from the validation values (validation comes first in `splits`)."""
        from evaluators.session import EvalSession

        started = time.time()
        session = EvalSession(self.cfg)
        session.attach_adapter_dir(adapter_dir)
        rank = self.cfg.adapter.full_rank
        for split in splits:
            test = split == "test"
            [own] = session.score_ranks(split, [rank], generate=test, intervals=test)
            reply.scores.update(own.metrics)
            reply.per_example[split] = own.per_example
            ranks = list(sweep_ranks)
            if test and ranks and test_ranks is not None:
                ranks = [r for r in test_ranks({r: reply.per_example[f"validation@{r}"] for r in ranks}) if r in ranks]
            for scored in session.score_ranks(split, ranks) if ranks else ():
                reply.rank_scores.setdefault(scored.rank, {}).update(scored.metrics)
                reply.per_example[f"{split}@{scored.rank}"] = scored.per_example
        reply.scores.update(_harness_scores(self.cfg, session, rank))
        reply.scores["score_seconds"] = time.time() - started  # a one-run method's sweep cost (fidelity)


@ray.remote
class RankEvaluator(_Worker):
    """Loads the base once, then scores many ranks by switching the active rank on one adapter."""

    def __init__(self, job: JobConfig, num_cpus: float):
        super().__init__(job, num_cpus)
        from evaluators.session import EvalSession

        self.session = EvalSession(self.cfg)
        self.busy_seconds += time.time() - self.placed_at  # loading the base is work done on the reservation
        self.adapter_key = None
        self.scratch = Path(tempfile.mkdtemp(prefix="dyrank-eval-"))

    def _ensure_adapter(self, key: str, files_ref: list) -> None:
        if self.adapter_key != key:
            files = ray.get(files_ref[0])  # the ref arrives wrapped so Ray does not fetch it on every call
            self.session.attach_adapter_dir(write_adapter_files(files, self.scratch / key))
            self.adapter_key = key
            _free_accelerator_memory(collect=True)

    def evaluate_ranks(self, ranks: list[int], split: str, key: str, files_ref: list, generate: bool = False,
                       intervals: bool = False, threads: int | None = None) -> list[EvalResult]:
        """One result per rank; the session scores them evaluation.ranks_per_forward at a time. Each result's
        start..end is its share of the group's time, so per-rank seconds still add up to the work done."""
        started = time.time()
        self._use_threads(threads)
        self._ensure_adapter(key, files_ref)
        scored = self.session.score_ranks(split, list(ranks), generate=generate, intervals=intervals)
        # The harness runs once per rank it scores: on the sweep with every_rank, else on the selected rank's test call
        # (the one that generates; the fidelity grid's test calls do not).
        harness = split == "validation" if self.cfg.evaluation.harness.every_rank else (split == "test" and generate)
        for s in scored:
            if harness:
                s.metrics.update(_harness_scores(self.cfg, self.session, s.rank))
        share, placement = (time.time() - started) / len(scored), _placement()
        results = [EvalResult(s.rank, s.metrics, placement, started + i * share, started + (i + 1) * share,
                              s.per_example, self.threads) for i, s in enumerate(scored)]
        _free_accelerator_memory()
        self.busy_seconds += time.time() - started
        return results

    def evaluate_rank(self, rank: int, split: str, key: str, files_ref: list, generate: bool = False,
                      intervals: bool = False) -> EvalResult:
        return self.evaluate_ranks([rank], split, key, files_ref, generate, intervals)[0]

    def evaluate_base(self, split: str, generate: bool = False, threads: int | None = None) -> EvalResult:
        started = time.time()
        self._use_threads(threads)
        [scored] = self.session.score_ranks(split, [None], generate=generate)
        result = EvalResult(None, scored.metrics, _placement(), started, time.time(), scored.per_example, self.threads)
        self.busy_seconds += time.time() - started
        return result

    def base_loads(self) -> tuple[str, int]:
        """(actor id, how many times it loaded the base): 1 however many ranks it scored."""
        return _placement().actor_id, self.session.base_loads


def actor_options(cfg, role: str) -> dict:
    """Ray options from the config's resources: GPUs (fractions share a card), CPUs, a GPU memory class."""
    r = cfg.resources
    gpus, cpus = (r.trainer_gpus, r.trainer_cpus) if role == "trainer" else (r.evaluator_gpus, r.evaluator_cpus)
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": r.max_restarts, "max_task_retries": r.max_restarts}
    if r.gpu_memory_resource:
        options["resources"] = {r.gpu_memory_resource: gpus if gpus else 1}
    return options
