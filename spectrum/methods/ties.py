"""`ties`: trim, elect sign, disjoint merge (methods.md), with weights w = (1−λ, λ).

1. trim: each task vector keeps its top `density` fraction by magnitude, per tensor
   (rule and ties: spectrum/methods/magnitude.py); the rest becomes 0;
2. elect: s = sign((1−λ)τ'_D + λτ'_T);
3. disjoint merge: τ = Σ_i w_i τ'_i [sign τ'_i = s] / Σ_i w_i [sign τ'_i = s], 0 where no
   weighted contribution agrees; θ = θ_B + τ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spectrum.methods.base import MergeMethod, Param, Parents, Prepared
from spectrum.methods.magnitude import top_fraction_mask


def trim(tau: Tensor, density: float) -> Tensor:
    return torch.where(top_fraction_mask(tau, density), tau, 0.0)


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    density = params["density"]
    return {
        "base": parents.base,
        "trimmed_direct": trim(parents.direct - parents.base, density),
        "trimmed_thinking": trim(parents.thinking - parents.base, density),
    }


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    vectors = (prepared["trimmed_direct"], prepared["trimmed_thinking"])
    weights = (1.0 - lam, lam)
    elected = torch.sign(vectors[0] * weights[0] + vectors[1] * weights[1])
    numerator = torch.zeros_like(elected)
    denominator = torch.zeros_like(elected)
    for weight, vector in zip(weights, vectors, strict=True):
        agrees = torch.sign(vector) == elected
        numerator += torch.where(agrees, vector * weight, 0.0)
        denominator += agrees * weight
    merged = torch.where(denominator > 0, numerator / denominator, 0.0)
    return prepared["base"] + merged


METHOD = MergeMethod(
    name="ties",
    summary="TIES: trim each task vector to its top density, elect signs, average agreeing.",
    prepare=prepare,
    apply=apply,
    params=(
        Param(
            "density",
            float,
            0.8,
            "fraction of each task vector kept by magnitude, per tensor",
            minimum=0.0,
            maximum=1.0,
        ),
    ),
    needs_base=True,
    interpolates=False,
)
