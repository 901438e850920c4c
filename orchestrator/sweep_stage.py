"""Stages 2-3 of the pipeline (orchestrator/pipeline.py): the evaluator pool, and every rank of the trained adapter
scored on validation by it, in groups of ranks per Ray task, with a queue on each evaluator so none idles between
tasks; and the test scoring of chosen ranks (the selected one, the fidelity grid's).
Evaluators hold a reservation only while they have work: the pool starts once the adapter exists, and each one is
released when nothing is left for it (the last after the test scoring), so the parent run's idle share
(orchestrator/reservations.py) stays small.
A mixin of `Pipeline`: it uses the pipeline's records, actors, per-example store and config."""

from __future__ import annotations

import math
from collections import Counter, deque

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from orchestrator.actors import RankEvaluator, actor_options
from orchestrator.errors import PipelineError
from orchestrator.messages import JobKey

ZEROSHOT = JobKey("zeroshot", None)
QUEUE_DEPTH = 2  # tasks queued on each evaluator during the sweep: one running, the next one waiting
TEST_KEYS = ("test_", "harness_")  # what a rank's test scoring adds to its eval run (the harness: optional)


class SweepStage:
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
        self.evaluators_started, self.evaluators_released = 0, 0
        return [self._start_evaluator() for _ in range(n)]

    def _start_evaluator(self):
        index, options = self.evaluators_started, actor_options(self.cfg, "evaluator")
        actor = RankEvaluator.options(name=self.evaluator_name(index), **options).remote(self.job, options["num_cpus"])
        self.evaluators_started += 1
        self.actors.append(actor)
        self.evaluators.append(actor)
        self.reservations.add(f"evaluator_{index}", actor, options)
        return actor

    def replacement_evaluator(self):
        """A fresh evaluator when the live ones all died for good but some were released earlier, else None.
        Releasing an idle evaluator must not cost the pipeline the lives it would have had had it kept it:
        without this, the last evaluator dying after the others were released stopped the run. The pool
        still uses at most as many evaluators at once, and as many in all, as it started with."""
        if self.evaluators or not self.evaluators_released:
            return None
        self.evaluators_released -= 1
        return self._start_evaluator()

    def release_evaluator(self, actor) -> None:
        """An evaluator with no work left: its base-load count read (the base_loads tag), then released."""
        if actor not in self.evaluators:  # died for good: nothing to read, Ray holds nothing for it
            return
        loads = self._on_live_evaluator("base loads", lambda a: a.base_loads.remote(), actor)
        if loads is not None:
            self.base_loads[loads[0]] = loads[1]
        if actor in self.evaluators:  # still alive after that call
            self.evaluators.remove(actor)
            self._release(actor)
            self.evaluators_released += 1

    def _on_live_evaluator(self, what: str, call, only=None):
        """ray.get(call(actor)) on a live evaluator (`only`: that one, or None if it died); an evaluator that
        died for good is dropped and the next one tried. A task that fails on a live actor is a failure."""
        candidates = [only] if only is not None else list(self.evaluators)
        while candidates:
            actor = candidates.pop(0)
            if actor not in self.evaluators:
                continue
            try:
                ref = call(actor)
                self.finish_baselines(until=ref)  # baselines that finish meanwhile give their trainers back
                return ray.get(ref)
            except ActorDiedError:
                self.evaluators.remove(actor)
                if only is None and not candidates and (fresh := self.replacement_evaluator()) is not None:
                    candidates.append(fresh)
            except (RayTaskError, RayActorError) as exc:
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise PipelineError(f"{what} failed: {reason}") from None
        if only is not None:
            return None
        raise PipelineError(f"{what}: every evaluator died (restarts used up)")

    def ranks_per_task(self) -> int:
        """Ranks sent to an evaluator in one Ray task: what its session scores in one batched forward
        (evaluation.ranks_per_forward, else the default of the device the evaluators hold)."""
        from evaluators.session import RANKS_PER_FORWARD_DEFAULT

        chosen = self.cfg.evaluation.ranks_per_forward
        return chosen or RANKS_PER_FORWARD_DEFAULT["cuda" if self.cfg.resources.evaluator_gpus else "cpu"]

    def sweep(self, pool: list, adapter_key: str, files_ref, zeroshot: bool = True) -> list[dict]:
        """Score the base (zero-shot, when `zeroshot`) and spread the unrecorded ranks over the pool in groups
        (`ranks_per_task`), recording each result the moment it arrives. Each evaluator holds up to QUEUE_DEPTH
        tasks, so the next group is already queued on it when one finishes: no evaluator idles waiting for the
        driver. Once nothing is left to hand out, an evaluator whose queue is empty is released at once (its
        reservation would only idle) while another still works; the last one stays for the test scoring.
        Baselines that finish meanwhile are collected in the same loop (an evaluator may be waiting for the GPU a
        finished baseline trainer holds until then); those still training when the sweep is done stay in
        `self.baseline_jobs`, so the test scoring need not wait for them."""
        results = self.records.rows("eval")
        pending = deque(r for r in self.cfg.eval_ranks() if r not in results)
        if zeroshot:
            pending.appendleft(None)  # None: the base alone; first, so it is never the sweep's tail
        group_size = self.ranks_per_task()
        # An evaluator gets work only once it is up: one still waiting for resources would sit on it.
        waiting = {a.base_loads.remote(): ("ready", a, ()) for a in pool}
        waiting.update({ref: ("baseline", actor, key.id) for key, (actor, ref) in self.baseline_jobs.items()})
        ready, queued, failures = [], Counter(), Counter()

        def release_if_done(actor) -> None:
            if not pending and queued[actor] == 0 and actor in ready and len(ready) > 1:
                ready.remove(actor)
                self.release_evaluator(actor)

        def evaluators_busy() -> bool:  # a task out, or an evaluator not up yet (it may be given the last group)
            return any(what != "baseline" for what, _, _ in waiting.values())

        while pending or evaluators_busy():
            while pending and ready:  # the least-loaded evaluator takes the next group
                actor = min(ready, key=lambda a: queued[a])
                if queued[actor] >= QUEUE_DEPTH:
                    break
                threads = self.share_cores()  # the evaluators and any baseline still training share the cores
                if pending[0] is None:  # the zero-shot score
                    group = (pending.popleft(),)
                    ref = actor.evaluate_base.remote("validation", threads=threads)
                else:
                    group = []
                    while pending and pending[0] is not None and len(group) < group_size:
                        group.append(pending.popleft())
                    ref = actor.evaluate_ranks.remote(group, "validation", adapter_key, [files_ref], threads=threads)
                waiting[ref] = ("eval", actor, group)
                queued[actor] += 1
            for actor in list(ready):  # nothing left to hand out: idle evaluators go, but one
                release_if_done(actor)
            if not waiting:
                raise PipelineError(f"every evaluator died; ranks left: {list(pending)}")
            [ref], _ = ray.wait(list(waiting), num_returns=1)
            what, actor, group = waiting.pop(ref)
            if what == "baseline":  # `group` holds the job's name here
                if JobKey("baseline", group) in self.baseline_jobs:  # not already collected by _on_live_evaluator
                    self._finish_baseline(JobKey("baseline", group))
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
                if died and (fresh := self.replacement_evaluator()) is not None:  # the others were released
                    waiting[fresh.base_loads.remote()] = ("ready", fresh, ())
                if what == "ready" and not died:
                    ready.append(actor)
                if what == "eval":
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
                lambda a: a.evaluate_ranks.remote(todo, "test", adapter_key, [files_ref], full, full,
                                                  self.share_cores()))
            for result in results:
                metrics = {k: v for k, v in result.scores.items() if k.startswith(TEST_KEYS)}
                self.tracker.log_metrics(done[result.rank].run_id, metrics)
                done[result.rank].row.update(metrics)
                self.per_example.put(JobKey("eval", result.rank), "test", result.per_example)
        return {r: {k: v for k, v in run.row.items() if k.startswith(TEST_KEYS)} for r, run in done.items()}
