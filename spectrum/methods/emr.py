"""`emr` (Elect, Mask & Rescale), collapsed to one model as the paper did (docs/METHODS.md).

flag = sign(τ_D + τ_T) (where the sum is 0: −1 as the authors' code, or 0 with
``sign_rule=paper``; docs/METHODS.md); M_i = [τ_i·flag > 0];
τ_uni = flag ⊙ max(|M_D⊙τ_D|, |M_T⊙τ_T|);
γ_i = Σ_n mean|τ_i[n]| / Σ_n mean|M_i[n]⊙τ_uni[n]| over all merged tensors n (the
``global_stats`` pass, fed by four per-tensor means that ``prepare`` keeps);
θ = θ_B + (1−λ)γ_D·M_D⊙τ_uni + λγ_T·M_T⊙τ_uni. A γ whose masked vector is zero in every
tensor multiplies only zeros; it is set to 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared, PreparedStream


@dataclass(frozen=True)
class Rescalers:
    direct: float
    thinking: float


def _mean_abs(tensor: Tensor) -> Tensor:
    return tensor.abs().mean(dtype=torch.float64)


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    tau_direct = parents.direct - parents.base
    tau_thinking = parents.thinking - parents.base
    total = tau_direct + tau_thinking
    # Where τ_D = −τ_T the sum is 0: the authors' code elects −1 there, the paper's sign 0.
    reference = params["sign_rule"] == "reference"
    flag = torch.where(total > 0, 1.0, -1.0) if reference else torch.sign(total)
    mask_direct = tau_direct * flag > 0
    mask_thinking = tau_thinking * flag > 0
    unified = flag * torch.maximum(
        torch.where(mask_direct, tau_direct.abs(), 0.0),
        torch.where(mask_thinking, tau_thinking.abs(), 0.0),
    )
    unified_direct = torch.where(mask_direct, unified, 0.0)
    unified_thinking = torch.where(mask_thinking, unified, 0.0)
    return {
        "base": parents.base,
        "unified_direct": unified_direct,
        "unified_thinking": unified_thinking,
        "mean_abs_tau_direct": _mean_abs(tau_direct),
        "mean_abs_tau_thinking": _mean_abs(tau_thinking),
        "mean_abs_unified_direct": _mean_abs(unified_direct),
        "mean_abs_unified_thinking": _mean_abs(unified_thinking),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 1.0


def global_stats(
    stream: PreparedStream, lams: Iterable[float], params: dict[str, Any]
) -> Rescalers:
    sums = dict.fromkeys(("tau_direct", "tau_thinking", "unified_direct", "unified_thinking"), 0.0)
    for _, prepared in stream():
        for key in sums:
            sums[key] += float(prepared[f"mean_abs_{key}"])
    return Rescalers(
        direct=_ratio(sums["tau_direct"], sums["unified_direct"]),
        thinking=_ratio(sums["tau_thinking"], sums["unified_thinking"]),
    )


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    if not isinstance(stats, Rescalers):
        raise ValueError("emr needs its whole-model rescalers: call global_stats before apply")
    merged = torch.add(
        prepared["base"], prepared["unified_direct"], alpha=(1.0 - lam) * stats.direct
    )
    return merged.add_(prepared["unified_thinking"], alpha=lam * stats.thinking)


METHOD = MergeMethod(
    name="emr",
    listed=6,
    summary="EMR: elect signs, unified task vector, per-model masks and whole-model rescalers.",
    prepare=prepare,
    apply=apply,
    global_stats=global_stats,
    params=(
        Param(
            "sign_rule",
            str,
            "reference",
            "elected sign where τ_D + τ_T = 0: reference (−1, the authors' code) or paper (0)",
            choices=("reference", "paper"),
        ),
    ),
    needs_base=True,
    interpolates=False,
)
