"""Fixed-rank LoRA on PEFT's LoRA layers: qlora on the 4-bit NF4 base, lora on a 16-bit one. The two differ only
in the base they load, which the recipe decides from the config: one code path for both."""

from __future__ import annotations

from trainers.adapters import attach_lora
from trainers.methods.base import TrainingMethod
from trainers.methods.qdylora.layer import resolve_rank_application


class LoraMethod(TrainingMethod):
    def attach(self, base, job):
        a = job.adapter
        return attach_lora(base, rank=self.spec.full_rank(a), alpha=a.alpha, dropout=a.dropout,
                           target_modules=a.target_modules, dynamic=self.spec.rank_dynamic, update_mode=a.update_mode,
                           rank_application=resolve_rank_application(a.rank_application, base.device),
                           gradient_checkpointing=job.training.gradient_checkpointing)
