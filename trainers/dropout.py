"""LoRA's input dropout, drawn from uniform floats instead of `bernoulli_`.

The same distribution as `nn.Dropout(p)` (each element kept with probability 1 - p and scaled by 1 / (1 - p)),
but on the CPU torch's `bernoulli_` draws about 2.5x slower than `rand`, and a LoRA step draws one mask per
adapted layer, twice under gradient checkpointing (the recompute replays the RNG): on SmolLM2 with LoRA on every
linear that was a quarter of a CPU training step (docs/benchmarks.md, G1). The uniform draw is always fp32 (a
bf16 uniform has 8 bits: P(u >= 0.1) would not be 0.9), and the recompute under checkpointing reproduces the same
mask because checkpointing restores the RNG state, as it does for `nn.Dropout`.
"""

from __future__ import annotations

import torch
from torch import nn


class UniformDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        # One fp32 mask already holding the scale: a single multiply forward and backward.
        scaled_keep = (torch.rand(x.shape, device=x.device, dtype=torch.float32) >= self.p) * (1.0 / (1.0 - self.p))
        return x * scaled_keep


def use_uniform_dropout(model, adapter: str = "default") -> int:
    """Swap every PEFT LoRA layer's `nn.Dropout` for `UniformDropout` of the same p; returns how many."""
    from trainers.adapters import lora_layers

    count = 0
    for layer in lora_layers(model, adapter):
        dropout = layer.lora_dropout[adapter]
        if type(dropout) is nn.Dropout:
            layer.lora_dropout[adapter] = UniformDropout(dropout.p)
            count += 1
    return count
