"""The DyLoRA forward on one LoRA layer.

PEFT computes   h = W0 x + scaling * B(A(dropout(x)))   with A: (r_max, d_in), B: (d_out, r_max).
DyLoRA at rank b uses only the first b ranks and rescales:

    h = W0 x + (alpha / b) * B[:, :b] @ A[:b, :] @ dropout(x)

`RankTruncatedLinear` replaces PEFT's `lora_A` / `lora_B` nn.Linear modules (sharing their weight
Parameter, so state-dict keys and PEFT's save/load stay as they are). Two ways to apply rank b, the same
numbers either way (`adapter.rank_application`):

- slice: A[:b, :] and B[:, :b] as views, PEFT's own per-layer `scaling` set to alpha / b. Fewer FLOPs
  (b/r_max of them on average), but every step has new matmul shapes.
- mask:  the full A and B, with A's output multiplied by m = (alpha/b, ..., alpha/b, 0, ..., 0) (length r_max,
  b non-zeros) and PEFT's scaling 1. Every step has QLoRA r_max's shapes and kernels (nothing for
  torch.compile or CUDA graphs to re-record); m lives on the device and is rewritten in place. Ranks above b
  get exactly zero gradient, as with slicing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPDATE_MODES = ("cumulative", "frozen")
RANK_APPLICATIONS = ("slice", "mask")


def resolve_rank_application(name: str, device) -> str:
    """auto: slice on the CPU (compute-bound: fewer FLOPs win, measured in G1/P1), mask on a GPU (launch-bound
    at these sizes: fixed shapes, no per-step re-planning)."""
    if name != "auto":
        return name
    return "mask" if torch.device(device).type == "cuda" else "slice"


class RankTruncatedLinear(nn.Linear):
    """A bias-free LoRA factor that uses only its first `active_rank` ranks.

    rank_dim 0 for A (rows are ranks), 1 for B (columns are ranks).
    update_mode "cumulative": every rank <= b gets gradients (they follow from the slice or mask itself);
    "frozen": only rank b does, as in the DyLoRA paper's code (ranks < b are held by a gradient mask).
    application "slice" or "mask": see the module docstring; in mask mode A holds the rank scale `m`.
    """

    def __init__(self, linear: nn.Linear, rank_dim: int, update_mode: str = "cumulative", application: str = "slice"):
        if linear.bias is not None:
            raise ValueError("LoRA factors with a bias (lora_bias=True) are not supported by QDyLoRA")
        if update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {update_mode!r}")
        if application not in RANK_APPLICATIONS:
            raise ValueError(f"rank application must be one of {RANK_APPLICATIONS}, got {application!r}")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = linear.weight  # shared Parameter: same storage, same state-dict key
        self.rank_dim = rank_dim
        self.update_mode = update_mode
        self.application = application
        self.max_rank = self.weight.shape[rank_dim]
        self.active_rank = self.max_rank
        if application == "mask" and rank_dim == 0:  # not saved: it follows from the active rank
            self.register_buffer("rank_scale", torch.ones(self.max_rank, device=self.weight.device), persistent=False)

    def set_rank(self, rank: int, alpha: float) -> None:
        """Use the first `rank` ranks; in mask mode A's scale becomes alpha/rank on them and 0 after (in place)."""
        self.active_rank = rank
        if self.application == "mask" and self.rank_dim == 0:
            keep = torch.arange(self.max_rank, device=self.rank_scale.device) < rank
            self.rank_scale.copy_(keep * (alpha / rank))

    def used_weight(self) -> torch.Tensor:
        b, full = self.active_rank, self.application == "mask"
        w = self.weight if full else self.weight.narrow(self.rank_dim, 0, b)  # narrow: a view, A[:b] or B[:, :b]
        if self.update_mode == "frozen" and w.requires_grad and torch.is_grad_enabled():
            w.register_hook(lambda grad: _keep_only_rank(grad, self.rank_dim, b - 1))
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.used_weight())
        if self.application == "mask" and self.rank_dim == 0:
            # Under autocast the fp32 scale keeps alpha/b exact (16/3 in bf16 is 5.34); B's matmul casts back down.
            autocast = torch.is_autocast_enabled(out.device.type)
            out = out * (self.rank_scale if autocast else self.rank_scale.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, active_rank={self.active_rank}/{self.max_rank}, "
                f"update_mode={self.update_mode}, application={self.application}")


def _keep_only_rank(grad: torch.Tensor, rank_dim: int, index: int) -> torch.Tensor:
    """Zero the gradient of every rank but `index` (0-based: rank b is index b-1) along rank_dim."""
    masked = torch.zeros_like(grad)
    masked.narrow(rank_dim, index, 1).copy_(grad.narrow(rank_dim, index, 1))
    return masked
