"""The LoRA family on PEFT's LoRA layers: qlora/lora (fixed rank) and qdylora/dylora (every rank 1..r_max).

The q- variants differ from the plain ones only in the base they load (4-bit NF4 vs 16-bit), which the
recipe decides from the config: one code path for both.
"""

from __future__ import annotations

from pathlib import Path

from trainers.adapters import attach_lora
from trainers.methods.base import Method
from trainers.qdylora import set_active_rank
from trainers.qdylora.model import write_dynamic_meta


class LoraMethod(Method):
    def __init__(self, name: str):
        self.name = name

    def attach(self, base, cfg):
        a = cfg.adapter
        return attach_lora(base, rank=a.full_rank, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules,
                           dynamic=a.dynamic, update_mode=a.update_mode,
                           gradient_checkpointing=cfg.training.gradient_checkpointing)

    def save(self, model, cfg, out_dir: Path) -> Path:
        """The full adapter (rank r_max for the dynamic ones) in PEFT's format, plus the dynamic-rank range."""
        a = cfg.adapter
        if a.dynamic:
            set_active_rank(model, a.r_max)
        model.save_pretrained(out_dir, safe_serialization=True)
        r_min, r_max = (a.r_min, a.r_max) if a.dynamic else (a.rank, a.rank)
        write_dynamic_meta(out_dir, r_min, r_max, a.alpha, a.method)
        return out_dir
