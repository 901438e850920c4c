"""Optimizers by config name; bitsandbytes' paged AdamW is QLoRA's (paging only matters on CUDA)."""

from __future__ import annotations

import torch


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    import bitsandbytes as bnb

    classes = {
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "adamw_32bit": bnb.optim.AdamW32bit,
    }
    return classes[name](params, lr=lr, weight_decay=weight_decay)
