"""`linear`: θ = (1−λ)θ_D + λθ_T = θ_D + λΔ."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spectrum.methods.base import MergeMethod, Parents, Prepared


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    # Keep θ_D and Δ: a new λ is then one fused multiply-add.
    return {"direct": parents.direct, "delta": parents.thinking - parents.direct}


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    return prepared["direct"] + lam * prepared["delta"]


METHOD = MergeMethod(
    name="linear",
    summary="Weighted average (1−λ)·direct + λ·thinking.",
    prepare=prepare,
    apply=apply,
)
