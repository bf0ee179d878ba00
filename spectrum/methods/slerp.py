"""`slerp`: spherical interpolation of each flattened tensor (docs/METHODS.md).

cos Ω = ⟨θ_D, θ_T⟩ / (‖θ_D‖‖θ_T‖); θ = sin((1−λ)Ω)/sin Ω · θ_D + sin(λΩ)/sin Ω · θ_T, and
`linear` when the two are nearly collinear (|cos Ω| > 1 − 1e-6) or either is all zeros.
The three dot products are the method's ``tensor_stats``, so the engine can stream a tensor
in slices: one pass for the sums, one for the merge.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import (
    MergeMethod,
    Parents,
    Prepared,
    SliceStream,
    stats_of,
    sum_over_chunks,
)
from spectrum.methods.linear import weighted_sum

COLLINEAR = 1.0 - 1e-6


def gram(direct: Tensor, thinking: Tensor) -> Tensor:
    """⟨D,D⟩, ⟨T,T⟩, ⟨D,T⟩ of one slice, in float64: exact enough at any tensor size."""
    direct, thinking = direct.reshape(-1).double(), thinking.reshape(-1).double()
    return torch.stack([direct @ direct, thinking @ thinking, direct @ thinking]).cpu()


def angle(sums: Tensor) -> float:
    """Ω in radians from the Gram sums; 0.0 means "interpolate linearly"."""
    dd, tt, dt = sums.tolist()
    norms = math.sqrt(dd * tt)
    if norms == 0.0:
        return 0.0
    cos = dt / norms
    return 0.0 if abs(cos) > COLLINEAR else math.acos(max(-1.0, min(1.0, cos)))


def gram_sums(slices: SliceStream, params: dict[str, Any]) -> Tensor:
    """The Gram sums of a whole tensor, added slice by slice in float64."""
    return sum_over_chunks(gram, ((piece.direct, piece.thinking) for piece in slices()))


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    sums = stats_of(gram_sums, parents, params)
    return {
        "direct": parents.direct,
        "thinking": parents.thinking,
        "omega": torch.tensor(angle(sums), dtype=torch.float64),
    }


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    omega = float(prepared["omega"])
    if omega == 0.0:
        return weighted_sum(prepared["direct"], prepared["thinking"], lam)
    sin_omega = math.sin(omega)
    # At λ=0 / λ=1 the coefficients are exactly (1, 0) / (0, 1): slerp interpolates.
    direct_weight = math.sin((1.0 - lam) * omega) / sin_omega
    thinking_weight = math.sin(lam * omega) / sin_omega
    # Two passes, not three: the thinking term joins with a fused multiply-add.
    merged = torch.mul(prepared["direct"], direct_weight)
    return merged.add_(prepared["thinking"], alpha=thinking_weight)


METHOD = MergeMethod(
    name="slerp",
    listed=2,
    summary="Spherical interpolation per tensor; linear where the parents are collinear.",
    prepare=prepare,
    apply=apply,
    elementwise=True,
    tensor_stats=gram_sums,
)
