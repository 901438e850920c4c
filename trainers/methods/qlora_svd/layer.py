"""The SVD truncation of one LoRA layer's update, in singular-value order.

A LoRA update is  delta = B @ A  with B: (d_out, r), A: (r, d_in). Its thin SVD needs no d x d matrix:

    B = Q_B R_B,  A^T = Q_A R_A            (QR; Q_B: d_out x r, Q_A: d_in x r, R_*: r x r)
    R_B R_A^T = U S V^T                    (an r x r SVD)
    B @ A = Q_B R_B R_A^T Q_A^T = (Q_B U) S (Q_A V)^T

so  B' = Q_B U sqrt(S),  A' = sqrt(S) (Q_A V)^T  give B' @ A' = B @ A with columns/rows sorted by singular value,
and B'[:, :b] @ A'[:b] is the best rank-b approximation of the update (Eckart-Young). The square root splits S
evenly between the factors, so neither grows large when one of B, A is small.
"""

from __future__ import annotations

import torch


def svd_ordered_factors(lora_A: torch.Tensor, lora_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') with B' @ A' == lora_B @ lora_A and rank-b prefixes the best rank-b truncations; computed in
    float64 (a cheap r x r problem) and returned in the input dtype."""
    r = lora_A.shape[0]
    if lora_B.shape[1] != r:
        raise ValueError(f"LoRA factors disagree on the rank: A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}")
    a, b = lora_A.double(), lora_B.double()
    q_b, r_b = torch.linalg.qr(b)  # reduced: (d_out, k), (k, r) with k = min(d_out, r)
    q_a, r_a = torch.linalg.qr(a.T)  # (d_in, k'), (k', r)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # k x k' core, never d x d
    root = s.sqrt()
    new_b = (q_b @ u[:, : len(s)]) * root
    new_a = root[:, None] * (vh[: len(s)] @ q_a.T)
    if len(s) < r:  # a layer narrower than r: the extra directions carry nothing; pad so shapes stay (r, .)
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], r - len(s))], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(r - len(s), new_a.shape[1])], dim=0)
    return new_a.to(lora_A.dtype), new_b.to(lora_B.dtype)
