"""GaLore's memory-estimate terms (`dyrank plan`): full-size weights and gradients, projected optimizer states."""

from __future__ import annotations

import torch

from trainers.memory_estimate import BLOCK_HIDDEN, BLOCK_MLP, MemoryEstimate, ModelShape, dtype_bytes
from trainers.methods.galore.config import effective_rank


def estimate_galore(shape: ModelShape, *, rank: int, batch: int, seq: int, base_dtype: torch.dtype,
                    eight_bit: bool = False, role: str = "trainer galore") -> MemoryEstimate:
    """Full-parameter training with GaLore: every weight and its gradient in the base dtype; AdamW's two moments
    live in the projected space (rank x the larger side of each block linear, the rank clamped below the
    smallest side as the training does) and at full size for everything else (embeddings, norms,
    lm_head); each matrix also keeps its fp32 projection basis."""
    width = dtype_bytes(base_dtype)
    params = shape.quantizable + shape.other
    state = 2 if eight_bit else 8
    r = effective_rank(rank, min(min(d) for d in shape.linear_dims))
    moments = sum(r * max(d) for d in shape.linear_dims) + shape.other  # projected (m x r), the rest full size
    projectors = sum(r * min(d) for d in shape.linear_dims) * 4  # one fp32 orthogonal basis per matrix
    tokens = batch * seq
    block = tokens * (BLOCK_HIDDEN * shape.hidden + BLOCK_MLP * shape.intermediate) * width
    activations = shape.layers * tokens * shape.hidden * width + max(block, tokens * shape.vocab * 12)
    return MemoryEstimate(role, params * width, 0, params * width, moments * state + projectors, activations)
