"""`linear`: θ = (1−λ)θ_D + λθ_T."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spectrum.methods.base import MergeMethod, Parents, Prepared


def weighted_sum(direct: Tensor, thinking: Tensor, lam: float) -> Tensor:
    # One fused pass (the engine's throughput and the live merger's in-place path use the
    # same kernel, so both give the same bytes). torch.lerp computes θ_D + λΔ for λ < 0.5
    # and θ_T − (1−λ)Δ otherwise, so λ=0 and λ=1 give the parents bit for bit.
    return torch.lerp(direct, thinking, lam)


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    return {"direct": parents.direct, "thinking": parents.thinking}


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    return weighted_sum(prepared["direct"], prepared["thinking"], lam)


METHOD = MergeMethod(
    name="linear",
    summary="Weighted average (1−λ)·direct + λ·thinking.",
    prepare=prepare,
    apply=apply,
)
