"""Stage 3 of the pipeline (orchestrator/pipeline.py): every rank of the trained adapter scored on validation by
the evaluator pool, in groups of ranks per Ray task, with a queue on each evaluator so none idles between tasks;
and the test scoring of chosen ranks (the selected one, the fidelity grid's).
A mixin of `Pipeline`: it uses the pipeline's records, evaluators, per-example store and config."""

from __future__ import annotations

from collections import Counter, deque

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from orchestrator.errors import PipelineError
from orchestrator.messages import JobKey
from orchestrator.reservations import phase_threads

ZEROSHOT = JobKey("zeroshot", None)
QUEUE_DEPTH = 2  # tasks queued on each evaluator during the sweep: one running, the next one waiting
TEST_KEYS = ("test_", "harness_")  # what a rank's test scoring adds to its eval run (the harness: optional)


class SweepStage:
    def ranks_per_task(self) -> int:
        """Ranks sent to an evaluator in one Ray task: what its session scores in one batched forward
        (evaluation.ranks_per_forward, else the default of the device the evaluators hold)."""
        from evaluators.session import RANKS_PER_FORWARD_DEFAULT

        chosen = self.cfg.evaluation.ranks_per_forward
        return chosen or RANKS_PER_FORWARD_DEFAULT["cuda" if self.cfg.resources.evaluator_gpus else "cpu"]

    def sweep(self, pool: list, adapter_key: str, files_ref, baseline_jobs: dict, zeroshot_ref=None) -> list[dict]:
        """Spread the unrecorded ranks over the pool in groups (`ranks_per_task`) and record each result the
        moment it arrives. Each evaluator holds up to QUEUE_DEPTH tasks, so the next group is already queued on
        it when one finishes: no evaluator idles waiting for the driver. Baselines still training and the
        zero-shot score are collected in the same loop, so no finished work waits on another. (Waiting for the
        zero-shot score first could deadlock: its evaluator may be waiting for the GPU a finished baseline
        trainer holds until its result is collected here.)"""
        results = self.records.rows("eval")
        pending = deque(r for r in self.cfg.eval_ranks() if r not in results)
        group_size, threads = self.ranks_per_task(), phase_threads(len(pool))  # the sweep: evaluators share the cores
        # An evaluator gets work only once it is up: one still waiting for resources would sit on it.
        waiting = {a.base_loads.remote(): ("ready", a, ()) for a in pool}
        waiting.update({ref: ("baseline", actor, key.id) for key, (actor, ref) in baseline_jobs.items()})
        if zeroshot_ref is not None:  # submitted with the pool (its "ready" call marks the actor idle, not this)
            waiting[zeroshot_ref] = ("zeroshot", pool[0], (None,))
        ready, queued, failures = [], Counter(), Counter()
        while pending or waiting:
            while pending and ready:  # the least-loaded evaluator takes the next group
                actor = min(ready, key=lambda a: queued[a])
                if queued[actor] >= QUEUE_DEPTH:
                    break
                if pending[0] is None:  # the zero-shot score, moved here when its evaluator died
                    group = (pending.popleft(),)
                    ref = actor.evaluate_base.remote("validation", threads=threads)
                else:
                    group = []
                    while pending and pending[0] is not None and len(group) < group_size:
                        group.append(pending.popleft())
                    ref = actor.evaluate_ranks.remote(group, "validation", adapter_key, [files_ref], threads=threads)
                waiting[ref] = ("eval", actor, group)
                queued[actor] += 1
            if not waiting:
                raise PipelineError(f"every evaluator died; ranks left: {list(pending)}")
            [ref], _ = ray.wait(list(waiting), num_returns=1)
            what, actor, group = waiting.pop(ref)
            if what == "baseline":  # `group` holds the job's name here
                self._finish_baseline(JobKey("baseline", group), baseline_jobs)
                continue
            if what == "eval":
                queued[actor] -= 1
            try:
                found = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                died = isinstance(exc, ActorDiedError)  # restarts used up; its work goes to the others
                if died and actor in self.evaluators:
                    self.evaluators.remove(actor)
                if died and actor in ready:
                    ready.remove(actor)
                if what == "ready" and not died:
                    ready.append(actor)
                if what in ("eval", "zeroshot"):
                    for rank in group:
                        failures[rank] += 1
                        if failures[rank] > self.cfg.resources.max_restarts or not self.evaluators:
                            name = "zero-shot" if rank is None else f"rank {rank}"
                            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                            if rank is None:
                                self.records.record_failure("zeroshot", None, reason)
                            raise PipelineError(f"{name} failed {failures[rank]} times: {reason}") from None
                    pending.extendleft(reversed(group))
                continue
            if what == "ready":
                ready.append(actor)
                continue
            for result in found if isinstance(found, list) else [found]:
                if result.rank is None:
                    if ZEROSHOT not in self.records:
                        self._record_eval(result)
                    continue
                if result.rank in results:  # a duplicate from a retry: the first result stands
                    continue
                self._record_eval(result)
                results[result.rank] = result.row()
                self.on_event("eval", {**results[result.rank], "actor_id": result.placement.actor_id})
        return [results[r] for r in sorted(results)]

    def score_test(self, ranks: list[int], adapter_key: str, files_ref, full: bool = False) -> dict[int, dict]:
        """Ranks of the main adapter on test in one Ray task (the session batches them), each recorded on its eval
        run with its per-example values; `full` (the selected rank) adds generation and intervals. A rank scored
        before (this run or before a resume) is not scored again. Returns rank -> its test_* (and harness_*)."""
        done = {rank: self.records[JobKey("eval", rank)] for rank in ranks}
        todo = [r for r, run in done.items()
                if "test_loss" not in run.row or (full and "test_loss_ci_low" not in run.row)]
        if todo:
            results = self._on_live_evaluator(
                f"test scoring of rank(s) {todo}",
                lambda a: a.evaluate_ranks.remote(todo, "test", adapter_key, [files_ref], full, full))
            for result in results:
                metrics = {k: v for k, v in result.scores.items() if k.startswith(TEST_KEYS)}
                self.tracker.log_metrics(done[result.rank].run_id, metrics)
                done[result.rank].row.update(metrics)
                self.per_example.put(JobKey("eval", result.rank), "test", result.per_example)
        return {r: {k: v for k, v in run.row.items() if k.startswith(TEST_KEYS)} for r, run in done.items()}
