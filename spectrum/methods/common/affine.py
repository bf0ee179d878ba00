"""Methods whose merge is affine in λ: θ = anchor + λ·step.

task_arithmetic, dare, twin and lore all reduce to that once their λ-independent work is
done, so their ``prepare`` returns ``affine(anchor, step)`` and they share ``apply``: one
fused multiply-add, the whole cost of a new λ in the live merger.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import Prepared


def affine(anchor: Tensor, step: Tensor) -> Prepared:
    return {"anchor": anchor, "step": step}


def apply_affine(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    return torch.add(prepared["anchor"], prepared["step"], alpha=lam)
