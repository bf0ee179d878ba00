"""`task_arithmetic`: θ = θ_B + s·[(1−λ)τ_D + λτ_T], τ_i = θ_i − θ_B (s = 1 equals `linear`)."""

from __future__ import annotations

from typing import Any

from spectrum.methods.common.affine import affine, apply_affine
from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    scale = params["scale"]
    # θ = (θ_B + s·τ_D) + λ·s·(τ_T − τ_D): a new λ is one multiply-add.
    return affine(
        parents.base + scale * (parents.direct - parents.base),
        scale * (parents.thinking - parents.direct),
    )


METHOD = MergeMethod(
    name="task_arithmetic",
    listed=3,
    summary="Base + s·[(1−λ)·τ_direct + λ·τ_thinking] with task vectors τ = parent − base.",
    prepare=prepare,
    apply=apply_affine,
    params=(Param("scale", float, 1.0, "scale s of the combined task vector", minimum=0.0),),
    needs_base=True,
    elementwise=True,
    # (θ_D − θ_B) + θ_B is θ_D only up to rounding, and s ≠ 1 leaves the segment.
    interpolates=False,
)
