"""`dyrank plan`: each actor's estimated peak memory before anything is launched, and the refusal of a
config whose actors cannot fit the GPU memory it declares (resources.gpu_memory_gb or a gpu_<N>gb resource).

Only the model's config.json is read; the estimate itself is trainers.memory_estimate (exact parameter counts from an
empty-weight model, bytes per parameter as the recipe stores them, activations per token), with each method's own
terms (`estimate_memory` of its training class).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import PipelineError
from orchestrator.fidelity_stage import reused_training
from trainers.memory_estimate import GIB, MemoryEstimate, estimate_evaluation, model_shape
from trainers.methods import make_trainer
from trainers.models import resolve_base, resolve_compute_dtype


@dataclass(frozen=True)
class ActorPlan:
    estimate: MemoryEstimate
    gpus: float  # the actor's GPU share (0: a CPU actor)
    budget_gb: float | None  # its share of the declared GPU memory; None when nothing is declared

    @property
    def fits(self) -> bool:
        return self.budget_gb is None or self.gpus == 0 or self.estimate.total <= self.budget_gb * GIB


def plan(cfg) -> list[ActorPlan]:
    """One entry per kind of actor the pipeline starts: the main trainer, each baseline job that trains, an evaluator."""
    from transformers import AutoConfig

    a, q, r = cfg.adapter, cfg.quantization, cfg.resources
    model_config = AutoConfig.from_pretrained(resolve_base(cfg.model.source), trust_remote_code=cfg.model.trust_remote_code)
    shape = model_shape(model_config, a.target_modules)
    # each method estimates its own training (its base, optimizer and rank: trainers/methods/*)
    trainers = [make_trainer(a.method).estimate_memory(shape, cfg, f"trainer {a.method} r{a.full_rank}")]
    # a qlora-svd baseline made from a grid job's training (orchestrator/fidelity_stage.py) starts no actor of its own
    trainers += [make_trainer(job.method).estimate_memory(shape, job.config, f"trainer {job.name}")
                 for job in cfg.baseline_jobs() if reused_training(cfg, job) is None]
    evaluator = estimate_evaluation(shape, rank=a.full_rank, batch=cfg.evaluation.batch_size, seq=cfg.data.max_seq_len,
                                    load_in_4bit=q.load_in_4bit, compute_dtype=resolve_compute_dtype(q.compute_dtype),
                                    dequantize=cfg.evaluation.dequantize_base, double_quant=q.double_quant)
    gpu_gb = r.gpu_budget_gb()
    share = lambda gpus: gpu_gb * gpus if gpu_gb is not None else None  # noqa: E731
    return ([ActorPlan(e, r.trainer_gpus, share(r.trainer_gpus)) for e in trainers]
            + [ActorPlan(evaluator, r.evaluator_gpus, share(r.evaluator_gpus))])


def format_plan(plans: list[ActorPlan]) -> str:
    # GiB for real models, MiB where every actor is under one GiB (tiny test models)
    unit, name = (GIB, "GiB") if max(p.estimate.total for p in plans) >= GIB else (2**20, "MiB")
    head = (f"{'actor (' + name + ')':<30}{'weights':>9}{'adapter':>9}{'grads':>8}{'optim':>8}{'activ.':>8}{'peak':>8}"
            "  budget (GiB)")
    rows = [head]
    for p in plans:
        e = p.estimate
        cells = [e.weights, e.trainable, e.gradients, e.optimizer, e.activations, e.total]
        budget = "CPU" if p.gpus == 0 else ("-" if p.budget_gb is None else f"{p.budget_gb:.1f}")
        mark = "" if p.fits else "  DOES NOT FIT"
        rows.append(f"{e.role:<30}" + "".join(f"{c / unit:>{w}.2f}" for c, w in zip(cells, (9, 9, 8, 8, 8, 8)))
                    + f"  {budget}{mark}")
    return "\n".join(rows)


def check_fits(cfg, plans: list[ActorPlan] | None = None) -> list[ActorPlan]:
    """Raise a PipelineError naming every actor whose estimated peak exceeds its declared GPU share."""
    plans = plans if plans is not None else plan(cfg)
    over = [p for p in plans if not p.fits]
    if over:
        # three significant digits, not one decimal: a small model's 0.003 GiB over a 0.001 GiB share must not read "0.0 > 0.0"
        detail = "; ".join(f"{p.estimate.role}: {p.estimate.total / GIB:.3g} GiB > {p.budget_gb:.3g} GiB" for p in over)
        raise PipelineError(
            f"resources: estimated peak memory exceeds the declared GPU memory ({detail}); lower training.batch_size "
            "or data.max_seq_len, turn on training.gradient_checkpointing or quantization.load_in_4bit, or give "
            "actors a larger GPU share")
    return plans
