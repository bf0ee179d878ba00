"""`twin`: shared midpoint plus sparsified exclusive vectors (docs/METHODS.md).

θ* = θ_B + (τ_D + τ_T)/2, which is the midpoint (θ_D + θ_T)/2 whatever θ_B is. So a base
is accepted but not needed: without one θ* is computed as the midpoint, with one by the
formula (equal up to rounding). v_i = θ_i − θ*; each is sparsified on its own with mask
rate r: `magnitude` keeps its top 1 − r fraction by magnitude per tensor (rule:
docs/METHODS.md), `svd` keeps the top round((1 − r)·rank) singular values of
each matrix (3-D tensors: per expert; 1-D tensors fall back to `magnitude`).
θ = θ* + (1−λ)v'_D + λv'_T, which for two models is midpoint + (2λ−1)·TopK(Δ/2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.affine import affine, apply_affine
from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared
from spectrum.methods.common.lowrank import keep_top_singular
from spectrum.methods.common.magnitude import top_fraction_mask

VARIANTS = ("magnitude", "svd")


def sparsify(vector: Tensor, keep: float, variant: str) -> Tensor:
    if variant == "svd" and vector.ndim >= 2:
        return keep_top_singular(vector, keep)
    return torch.where(top_fraction_mask(vector, keep), vector, 0.0)


def shared_model(parents: Parents) -> Tensor:
    if parents.base is None:
        return (parents.direct + parents.thinking) * 0.5
    base = parents.base
    return base + ((parents.direct - base) + (parents.thinking - base)) * 0.5


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    keep = 1.0 - params["mask_rate"]
    shared = shared_model(parents)
    exclusive_direct = sparsify(parents.direct - shared, keep, params["variant"])
    exclusive_thinking = sparsify(parents.thinking - shared, keep, params["variant"])
    return affine(shared + exclusive_direct, exclusive_thinking - exclusive_direct)


METHOD = MergeMethod(
    name="twin",
    listed=7,
    summary="TWIN: midpoint + sparsified exclusive vectors (base optional, result independent).",
    prepare=prepare,
    apply=apply_affine,
    params=(
        Param(
            "mask_rate",
            float,
            0.2,
            "fraction r of each exclusive vector dropped (by magnitude, or of the singular values)",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "variant",
            str,
            "magnitude",
            "how exclusive vectors are sparsified: top entries, or top singular values",
            choices=VARIANTS,
        ),
    ),
    interpolates=False,
)
