"""Merging a rank-switchable adapter into its base, exactly, at one rank.

PEFT's `get_delta_weight` multiplies the *full* `B @ A` (all r_max ranks) by the layer's current scaling,
which `set_active_rank` sets to alpha / b: so a plain `merge_and_unload()` at b < r_max adds the wrong
update. `attach_dynamic_rank` therefore makes every dynamic layer refuse PEFT's merge with a message
pointing here, and `merge_at_rank` first turns each layer into the plain rank-b PEFT LoRA that
`export_rank` writes (A[:b], B[:, :b], r = b, scaling alpha / b), then lets PEFT merge that.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.adapters import lora_layers
from trainers.methods.qdylora.layer import RankTruncatedLinear


def refuse_full_rank_merge(layer, adapter: str = "default") -> None:
    """Make PEFT's merge (merge_adapter, merge_and_unload) on this dynamic layer raise instead of adding
    alpha / b times the full-rank update. An instance attribute: only dynamic layers are affected."""

    def get_delta_weight(name: str) -> torch.Tensor:
        if name == adapter:
            raise RuntimeError(
                "merging a rank-switchable (QDyLoRA/DyLoRA) adapter with PEFT's merge would add alpha/b times the "
                "full-rank B @ A; use trainers.methods.qdylora.merge_at_rank(model, rank), or export_rank first"
            )
        return type(layer).get_delta_weight(layer, name)

    layer.get_delta_weight = get_delta_weight


def to_plain_rank(model, rank: int, adapter: str = "default") -> int:
    """Turn every dynamic LoRA layer into a plain PEFT LoRA of rank `rank` in place (copies of the first
    `rank` ranks, r and scaling set to match); returns how many layers changed."""
    count = 0
    for layer in lora_layers(model, adapter):
        a, b = layer.lora_A[adapter], layer.lora_B[adapter]
        if not isinstance(a, RankTruncatedLinear):
            continue
        if not 1 <= rank <= a.max_rank:
            raise ValueError(f"rank {rank} is outside 1..{a.max_rank}")
        layer.lora_A[adapter] = _plain_linear(a.weight[:rank])
        layer.lora_B[adapter] = _plain_linear(b.weight[:, :rank])
        layer.r[adapter] = rank
        layer.scaling[adapter] = layer.lora_alpha[adapter] / rank
        layer.__dict__.pop("get_delta_weight", None)  # PEFT's own merge is exact now
        count += 1
    if count == 0:
        raise ValueError("the model has no rank-switchable LoRA layers")
    return count


def merge_at_rank(model, rank: int, adapter: str = "default"):
    """The base with the rank-`rank` update merged in, adapters removed: the same weights as
    `export_rank(adapter_dir, rank)` loaded in plain PEFT and `merge_and_unload()`-ed."""
    to_plain_rank(model, rank, adapter)
    return model.merge_and_unload(adapter_names=[adapter])


def _plain_linear(weight: torch.Tensor) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=False, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
    linear.weight.requires_grad_(weight.requires_grad)
    return linear
