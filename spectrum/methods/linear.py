"""`linear`: θ = (1−λ)θ_D + λθ_T, with the float32 arithmetic mergekit uses.

The weights are rounded to float32, the sum starts from zero and takes each parent with a
fused multiply-add, then is divided by the float32 sum of the weights (1 up to one
rounding). Those are exactly mergekit's operations, so our `linear` is bit for bit its
`linear`; every step is elementwise, so a slice merged alone gives the same bytes as the
whole tensor (the engine and the live merger rely on that). λ = 0 and λ = 1 give the
parents exactly (a −0 becomes +0, as in mergekit).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import MergeMethod, Parents, Prepared


@functools.lru_cache(maxsize=64)
def weights(lam: float) -> tuple[float, float, float]:
    """(1−λ, λ) rounded to float32, and their float32 sum (1 up to one rounding)."""
    pair = torch.tensor([1.0 - lam, lam], dtype=torch.float32)
    return float(pair[0]), float(pair[1]), float(pair.sum())


def weighted_sum(direct: Tensor, thinking: Tensor, lam: float, out: Tensor | None = None) -> Tensor:
    """(1−λ)·direct + λ·thinking in float32, from parents of any floating dtype.

    ``out`` (float32, the parents' shape) receives the result in place: the live merger
    writes a float32 model's parameters that way without a temporary.
    """
    w_direct, w_thinking, total = weights(lam)
    if out is None:
        merged = torch.zeros(direct.shape, dtype=torch.float32, device=direct.device)
    else:
        merged = out.zero_()
    # add_ with alpha is the same fused multiply-add as mergekit's addcmul_ by a scalar.
    merged.add_(direct, alpha=w_direct).add_(thinking, alpha=w_thinking)
    if total != 1.0:  # dividing by exactly 1 changes no bit: skip the pass
        merged.div_(total)
    return merged


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    return {"direct": parents.direct, "thinking": parents.thinking}


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    return weighted_sum(prepared["direct"], prepared["thinking"], lam)


METHOD = MergeMethod(
    name="linear",
    listed=1,
    summary="Weighted average (1−λ)·direct + λ·thinking.",
    prepare=prepare,
    apply=apply,
    elementwise=True,
)
