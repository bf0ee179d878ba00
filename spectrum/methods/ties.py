"""`ties`: trim, elect sign, disjoint merge (docs/METHODS.md), with weights w = (1−λ, λ).

1. trim: each task vector keeps its top `density` fraction by magnitude, per tensor
   (rule and ties: docs/METHODS.md); the rest becomes 0;
2. elect: s = sign((1−λ)τ'_D + λτ'_T); where that sum is 0, s = 0 (the position keeps
   θ_B) or, with ``tie_break=plus``, + as mergekit elects;
3. disjoint merge: τ = Σ_i w_i τ'_i [sign τ'_i = s] / Σ_i w_i [sign τ'_i = s], 0 where no
   weighted contribution agrees; θ = θ_B + τ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared
from spectrum.methods.common.magnitude import top_fraction_mask


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
    direct, thinking = prepared["trimmed_direct"], prepared["trimmed_thinking"]
    combined = direct * (1.0 - lam) + thinking * lam
    elected = torch.sign(combined)
    if params["tie_break"] == "plus":
        # mergekit elects + where the weighted sum is 0; a weight of 0 then never agrees.
        elected = torch.where(combined == 0, 1.0, elected)
    direct_agrees = torch.sign(direct) == elected
    thinking_agrees = torch.sign(thinking) == elected
    if params["tie_break"] == "plus":
        direct_agrees &= lam < 1.0
        thinking_agrees &= lam > 0.0
    # The disjoint mean for two models, without dividing: where both agree the weights sum
    # to 1 and the mean is `combined`; where one agrees it is that one's value; else 0.
    # (Zeros agree only with an elected 0, where every term is 0 anyway.)
    merged = torch.where(
        direct_agrees,
        torch.where(thinking_agrees, combined, direct),
        torch.where(thinking_agrees, thinking, 0.0),
    )
    return merged.add_(prepared["base"])


METHOD = MergeMethod(
    name="ties",
    listed=5,
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
        Param(
            "tie_break",
            str,
            "zero",
            "elected sign where the weighted sum is 0: zero (keep θ_B) or plus (mergekit)",
            choices=("zero", "plus"),
        ),
    ),
    needs_base=True,
    interpolates=False,
)
