"""`dare`: θ = θ_B + (1−λ)·(m_D⊙τ_D)/(1−p) + λ·(m_T⊙τ_T)/(1−p).

m_D, m_T are independent Bernoulli masks with keep probability 1 − p (p = drop rate).
They are drawn on the CPU from a generator seeded by (seed, tensor name) only, direct's
mask first, so a config gives the same bytes on any device and in any tensor order. The
CPU generator (mt19937) keeps only 32 bits of its seed, so the pair is hashed into 32
bits with CRC-32 rather than packed side by side.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.affine import affine, apply_affine
from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared


def mask_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator that depends on the merge seed and the tensor name only."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(zlib.crc32(f"{seed}\0{name}".encode()))
    return generator


def _rescaled_keep(tau: Tensor, keep: float, generator: torch.Generator) -> Tensor:
    mask = torch.rand(tau.shape, generator=generator) < keep
    return torch.where(mask.to(tau.device), tau / keep, 0.0)


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    keep = 1.0 - params["drop_rate"]
    generator = mask_generator(seed, parents.name)
    kept_direct = _rescaled_keep(parents.direct - parents.base, keep, generator)
    kept_thinking = _rescaled_keep(parents.thinking - parents.base, keep, generator)
    return affine(parents.base + kept_direct, kept_thinking - kept_direct)


METHOD = MergeMethod(
    name="dare",
    listed=4,
    summary="Drop-and-rescale: seeded random masks on both task vectors, then weighted sum.",
    prepare=prepare,
    apply=apply_affine,
    params=(
        Param(
            "drop_rate",
            float,
            0.2,
            "probability p of dropping each task-vector entry (kept ones are scaled by 1/(1−p))",
            minimum=0.0,
            maximum=0.99,
        ),
    ),
    needs_base=True,
    interpolates=False,
)
