"""`linear`: θ = (1−λ)θ_D + λθ_T."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spectrum.methods.base import MergeMethod, Parents, Prepared


def weighted_sum(direct: Tensor, thinking: Tensor, lam: float) -> Tensor:
    # Two products and a sum (no θ_D + λΔ): λ=0 and λ=1 give the parents bit for bit, and
    # the rounding is that of mergekit's linear merge.
    return direct * (1.0 - lam) + thinking * lam


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
