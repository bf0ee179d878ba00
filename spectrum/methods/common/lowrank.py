"""Singular-value operations shared by `lore` (SVT) and `twin`'s `svd` variant (rank cut).

Both act on the last two dimensions, so a 3-D tensor (Qwen3-MoE's fused experts,
[experts, rows, cols]) is treated as a batch of matrices, one SVD per expert.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rebuild(u: Tensor, singular: Tensor, vh: Tensor) -> Tensor:
    return (u * singular.unsqueeze(-2)) @ vh


def singular_value_threshold(matrix: Tensor, mu: float) -> Tensor:
    """SVT_μ(X) = U·max(σ − μ, 0)·Vᵀ, per matrix of the last two dimensions."""
    u, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    return _rebuild(u, (singular - mu).clamp_min(0.0), vh)


def keep_top_singular(matrix: Tensor, keep_fraction: float) -> Tensor:
    """X rebuilt from its top round(keep·rank) singular values, per matrix (round half up)."""
    u, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = singular.shape[-1]
    kept = min(rank, int(keep_fraction * rank + 0.5))
    # torch returns singular values in descending order, so the top ones come first.
    return _rebuild(u[..., :kept], singular[..., :kept], vh[..., :kept, :])
