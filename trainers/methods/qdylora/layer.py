"""The DyLoRA forward on one LoRA layer.

PEFT computes   h = W0 x + scaling * B(A(dropout(x)))   with A: (r_max, d_in), B: (d_out, r_max).
DyLoRA at rank b uses only the first b ranks and rescales:

    h = W0 x + (alpha / b) * B[:, :b] @ A[:b, :] @ dropout(x)

`RankTruncatedLinear` replaces PEFT's `lora_A` / `lora_B` nn.Linear modules (sharing their weight
Parameter, so state-dict keys and PEFT's save/load stay as they are); `scaling` is PEFT's own per-layer
dict, set to alpha / b by `set_active_rank`. Slices are views: nothing of size r_max is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPDATE_MODES = ("cumulative", "frozen")


class RankTruncatedLinear(nn.Linear):
    """A bias-free LoRA factor that uses only its first `active_rank` ranks.

    rank_dim 0 for A (rows are ranks), 1 for B (columns are ranks).
    update_mode "cumulative": every rank <= b gets gradients (they follow from the slice itself);
    "frozen": only rank b does, as in the DyLoRA paper's code (ranks < b are held by a gradient mask).
    """

    def __init__(self, linear: nn.Linear, rank_dim: int, update_mode: str = "cumulative"):
        if linear.bias is not None:
            raise ValueError("LoRA factors with a bias (lora_bias=True) are not supported by QDyLoRA")
        if update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {update_mode!r}")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = linear.weight  # shared Parameter: same storage, same state-dict key
        self.rank_dim = rank_dim
        self.update_mode = update_mode
        self.max_rank = self.weight.shape[rank_dim]
        self.active_rank = self.max_rank

    def truncated_weight(self) -> torch.Tensor:
        b = self.active_rank
        w = self.weight.narrow(self.rank_dim, 0, b)  # a view: A[:b, :] or B[:, :b]
        if self.update_mode == "frozen" and w.requires_grad and torch.is_grad_enabled():
            w.register_hook(lambda grad: _keep_only_last_rank(grad, self.rank_dim))
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.truncated_weight())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active_rank={self.active_rank}/{self.max_rank}, update_mode={self.update_mode}"


def _keep_only_last_rank(grad: torch.Tensor, rank_dim: int) -> torch.Tensor:
    """Zero the gradient of ranks 1..b-1, keeping rank b (the last slice along rank_dim)."""
    masked = torch.zeros_like(grad)
    last = grad.shape[rank_dim] - 1
    masked.narrow(rank_dim, last, 1).copy_(grad.narrow(rank_dim, last, 1))
    return masked
