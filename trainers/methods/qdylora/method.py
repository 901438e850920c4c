"""Training QDyLoRA / DyLoRA: PEFT's LoRA at rank r_max made rank-truncatable (trainers/adapters.py, with the
spec's rank_dynamic); the recipe samples one rank per optimizer step."""

from __future__ import annotations

from pathlib import Path

from trainers.methods.qdylora.model import set_active_rank
from trainers.methods.qlora.method import LoraMethod


class DynamicLoraMethod(LoraMethod):
    def save(self, model, job, out_dir: Path) -> Path:
        """The full rank-r_max adapter (whatever rank the last step sampled) and its rank range."""
        set_active_rank(model, job.adapter.r_max)
        return super().save(model, job, out_dir)
