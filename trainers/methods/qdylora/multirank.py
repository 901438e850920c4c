"""Several ranks of one QDyLoRA adapter in one forward (evaluation only).

The batch is repeated k times; rows of block j are scored at rank b_j. Every LoRA layer runs at r_max with
PEFT's scaling set to 1, and a forward hook on lora_A multiplies its output (rows, tokens, r_max) by a
per-row mask m_j = (alpha / b_j) on ranks 1..b_j and 0 after, so for a row of block j

    B @ (m_j * (A @ x)) = (alpha / b_j) * B[:, :b_j] @ A[:b_j] @ x

which is exactly the rank-b_j forward of layer.py. With `scale_rank` (an SVD-ordered adapter, qlora-svd) the
mask is alpha / scale_rank on ranks 1..b_j, the scale set_active_rank uses at every rank then. The base matmuls
do k times the rows in one call instead of k calls: it pays where a forward is launch- or overhead-bound (a GPU),
not on a compute-bound CPU.
Training's own rank application lives in layer.py; this module only ever runs under inference.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from trainers.adapters import lora_layers
from trainers.methods.qdylora.model import get_active_rank, set_active_rank


def rank_row_mask(ranks: list[int], rows_per_rank: int, r_max: int, alpha: float, device=None,
                  scale_rank: int | None = None) -> torch.Tensor:
    """(k * rows_per_rank, 1, r_max): alpha / b_j (alpha / scale_rank if given) on the first b_j ranks of
    block j's rows, 0 elsewhere."""
    if not ranks:
        raise ValueError("no ranks to apply")
    bad = [b for b in ranks if not 1 <= b <= r_max]
    if bad:
        raise ValueError(f"ranks {bad} are outside 1..{r_max}")
    positions = torch.arange(r_max, device=device)
    per_rank = torch.tensor(ranks, device=device)
    divisor = per_rank.float() if scale_rank is None else torch.full((len(ranks),), float(scale_rank), device=device)
    mask = (positions < per_rank[:, None]).float() * (alpha / divisor)[:, None]  # (k, r_max)
    return mask.repeat_interleave(rows_per_rank, dim=0)[:, None, :]


@contextmanager
def ranks_per_row(model, ranks: list[int], adapter: str = "default", scale_rank: int | None = None):
    """Inside the block, a forward of k * n rows (any n) scores rows j*n..(j+1)*n-1 at rank ranks[j], scaled
    as set_active_rank(..., scale_rank=scale_rank) would. The model's active rank and PEFT's scaling come back
    as they were (under that same scale_rank), even on an error."""
    layers = list(lora_layers(model, adapter))
    if not layers:
        raise ValueError("the model has no LoRA layers")
    previous = get_active_rank(model, adapter)
    r_max = layers[0].lora_A[adapter].max_rank
    set_active_rank(model, r_max, adapter)
    masks: dict[tuple, torch.Tensor] = {}  # per (rows, alpha, device, dtype): every layer of a batch shares one

    def hook_for(layer):
        alpha = float(layer.lora_alpha[adapter])

        def apply(module, inputs, out):
            rows, remainder = divmod(out.shape[0], len(ranks))
            if remainder:
                raise ValueError(f"{out.shape[0]} rows do not split into {len(ranks)} rank blocks")
            key = (rows, alpha, out.device, out.dtype)
            if key not in masks:
                masks[key] = rank_row_mask(ranks, rows, r_max, alpha, out.device, scale_rank).to(out.dtype)
            return out * masks[key]
        return apply

    hooks = []
    try:
        for layer in layers:
            layer.scaling[adapter] = 1.0  # the mask carries alpha / b_j
            hooks.append(layer.lora_A[adapter].register_forward_hook(hook_for(layer)))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        set_active_rank(model, previous, adapter, scale_rank)  # restores PEFT's scaling as well
