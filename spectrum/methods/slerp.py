"""`slerp`: spherical interpolation of each flattened tensor (methods.md).

cos Ω = ⟨θ_D, θ_T⟩ / (‖θ_D‖‖θ_T‖); θ = sin((1−λ)Ω)/sin Ω · θ_D + sin(λΩ)/sin Ω · θ_T, and
`linear` when the two are nearly collinear (|cos Ω| > 1 − 1e-6) or either is all zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.base import MergeMethod, Parents, Prepared
from spectrum.methods.linear import weighted_sum

COLLINEAR = 1.0 - 1e-6
# Dot products in float64, a slice at a time: exact enough for 400M-value embeddings
# without a float64 copy of the whole tensor.
_CHUNK = 1 << 22


def _gram64(direct: Tensor, thinking: Tensor) -> tuple[float, float, float]:
    """⟨D,D⟩, ⟨T,T⟩, ⟨D,T⟩ in float64, one pass: each slice is widened once, not per dot."""
    direct, thinking = direct.reshape(-1), thinking.reshape(-1)
    dd = tt = dt = 0.0
    for start in range(0, direct.numel(), _CHUNK):
        d = direct[start : start + _CHUNK].double()
        t = thinking[start : start + _CHUNK].double()
        dd, tt, dt = dd + float(d @ d), tt + float(t @ t), dt + float(d @ t)
    return dd, tt, dt


def angle(direct: Tensor, thinking: Tensor) -> float:
    """Ω in radians; 0.0 means "interpolate linearly" (collinear or a zero tensor)."""
    dd, tt, dt = _gram64(direct, thinking)
    norms = math.sqrt(dd * tt)
    if norms == 0.0:
        return 0.0
    cos = dt / norms
    return 0.0 if abs(cos) > COLLINEAR else math.acos(max(-1.0, min(1.0, cos)))


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    omega = angle(parents.direct, parents.thinking)
    return {
        "direct": parents.direct,
        "thinking": parents.thinking,
        "omega": torch.tensor(omega, dtype=torch.float64),
    }


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    omega = float(prepared["omega"])
    if omega == 0.0:
        return weighted_sum(prepared["direct"], prepared["thinking"], lam)
    sin_omega = math.sin(omega)
    # At λ=0 / λ=1 the coefficients are exactly (1, 0) / (0, 1): slerp interpolates.
    direct_weight = math.sin((1.0 - lam) * omega) / sin_omega
    thinking_weight = math.sin(lam * omega) / sin_omega
    return prepared["direct"] * direct_weight + prepared["thinking"] * thinking_weight


METHOD = MergeMethod(
    name="slerp",
    summary="Spherical interpolation per tensor; linear where the parents are collinear.",
    prepare=prepare,
    apply=apply,
)
