"""BitNet-style quantization of one LoRA factor, trained with a straight-through estimator.

Per tensor W (a LoRA factor A or B), with s = mean|W|:
    binary  (1 bit)    Q(W) = sign(W - mean(W)) * s          -> values {-s, +s}
    ternary (1.58 bit) Q(W) = RoundClip(W / (s + eps), -1, 1) * s  -> values {-s, 0, +s}
The forward uses Q(W); the backward treats Q as the identity (W + (Q(W) - W).detach()), so the latent
full-precision W keeps learning from gradients a quantized weight alone could not take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def binarize(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().mean()
    return torch.where(w >= w.mean(), 1.0, -1.0).to(w.dtype) * scale  # sign with 0 -> +1: two values, never three


def ternarize(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().mean()
    return (w / (scale + EPS)).round().clamp(-1, 1) * scale


QUANTIZERS = {"1": binarize, "1.58": ternarize}


class BitFactor(nn.Linear):
    """A bias-free LoRA factor whose forward uses its quantized weight; shares PEFT's weight Parameter,
    so state-dict keys and PEFT's save/load are unchanged (the latent weights are what checkpoints hold)."""

    def __init__(self, linear: nn.Linear, bits: str):
        if linear.bias is not None:
            raise ValueError("LoRA factors with a bias are not supported by bitlora")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = linear.weight
        self.bits = bits
        self.quantize = QUANTIZERS[bits]

    def quantized_weight(self) -> torch.Tensor:
        w = self.weight
        return w + (self.quantize(w) - w).detach()  # straight-through: forward Q(W), gradient to W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"
