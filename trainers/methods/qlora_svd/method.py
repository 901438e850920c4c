"""Training qlora-svd: a plain QLoRA run at r_max (no rank sampling), saved in singular-value order so every rank
r_min..r_max is a prefix (trainers/methods/qlora_svd/model.py)."""

from __future__ import annotations

from pathlib import Path

from trainers.adapters import attach_lora
from trainers.methods.qlora.method import LoraMethod
from trainers.methods.qlora_svd.model import svd_order_adapter


class SvdTruncatedLoraMethod(LoraMethod):
    def attach(self, base, job):
        a = job.adapter
        return attach_lora(base, rank=a.r_max, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules,
                           gradient_checkpointing=job.training.gradient_checkpointing)

    def save(self, model, job, out_dir: Path) -> Path:
        """The trained rank-r_max adapter, its factors then reordered by singular value (the same update)."""
        super().save(model, job, out_dir)
        return svd_order_adapter(out_dir, r_min=job.adapter.r_min)
