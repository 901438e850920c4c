"""AdaLoRA's options: PEFT's budget schedule, in optimizer steps."""

from __future__ import annotations

from pydantic import Field

from trainers.config_base import PositiveInt, Section


class AdaLoraOptions(Section):
    """PEFT's AdaLoRA budget schedule, in optimizer steps (PEFT requires tinit + tfinal < training.max_steps)."""

    init_r: PositiveInt = Field(12, description="Rank every layer starts at; the budget is pruned down to adapter.rank on average.")
    tinit: int = Field(0, ge=0, description="Steps of warm-up before any pruning.")
    tfinal: int = Field(0, ge=0, description="Final steps with the allocation frozen (fine-tuning only).")
    delta_t: PositiveInt = Field(1, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regulariser on P and Q.")


def check_adapter(adapter) -> None:
    if adapter.adalora.init_r < adapter.rank:
        raise ValueError(f"adalora.init_r ({adapter.adalora.init_r}) must be at least rank ({adapter.rank}): "
                         "AdaLoRA prunes the budget down, never up")


def check_job(job) -> None:
    a = job.adapter
    if a.adalora.tinit + a.adalora.tfinal >= job.training.max_steps:
        raise ValueError(f"adapter.method adalora needs adalora.tinit + adalora.tfinal ({a.adalora.tinit} + "
                         f"{a.adalora.tfinal}) below training.max_steps ({job.training.max_steps}), as PEFT requires")
    if a.update_mode != "cumulative":
        raise ValueError("adapter.method adalora does not support adapter.update_mode: frozen (a DyLoRA option)")
    if job.training.loss_chunk_tokens:
        raise ValueError("adapter.method adalora does not support training.loss_chunk_tokens (its orthogonality "
                         "regulariser is added only to the model's own loss): set it to 0")
