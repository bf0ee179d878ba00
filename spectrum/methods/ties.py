"""`ties`: trim, elect sign, disjoint merge (docs/METHODS.md), with weights w = (1−λ, λ).

1. trim: each task vector keeps its top `density` fraction by magnitude, per tensor
   (rule and ties: docs/METHODS.md); the rest becomes 0;
2. elect: s = sign((1−λ)τ'_D + λτ'_T); where that sum is 0, s = 0 (the position keeps
   θ_B) or, with ``tie_break=plus``, + as mergekit elects;
3. disjoint merge: τ = Σ_i w_i τ'_i [sign τ'_i = s] / Σ_i w_i [sign τ'_i = s], 0 where no
   weighted contribution agrees; θ = θ_B + τ.

``prepare`` trims (step 1); ``apply`` does steps 2–3 for a λ. Given the two per-tensor
trim thresholds every step is elementwise: the thresholds are the method's ``tensor_stats``
(two passes over the tensor's slices, ``sliced_thresholds``), so the engine streams TIES in
slices like linear and never holds a whole float32 tensor. The live merger keeps ``index``
(each task vector's |τ| bits sorted, per tensor), so a new density re-prepares with the
thresholds read off instead of counted; ``apply_into`` writes into the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import (
    MergeMethod,
    Param,
    Parents,
    Prepared,
    SliceStream,
    stats_of,
)
from spectrum.methods.common.magnitude import selected_count, sliced_thresholds


def trim_thresholds(slices: SliceStream, params: dict[str, Any]) -> list[float | None]:
    """The top-``density`` magnitude threshold of τ_D and of τ_T (None: nothing is kept)."""

    def magnitudes() -> Iterator[tuple[Tensor, Tensor]]:
        for piece in slices():
            yield (piece.direct - piece.base).abs_(), (piece.thinking - piece.base).abs_()

    return sliced_thresholds(magnitudes, params["density"])


def threshold_bits(parents: Parents, params: dict[str, Any]) -> list[int | None]:
    """The two trim thresholds as float32 bit patterns: read off the live merger's
    ``index`` when it is handed one, else the ``tensor_stats`` (the engine's, or counted)."""
    if parents.index is not None:
        return [_read_off(parents.index[role], params["density"]) for role in ROLES]
    found = stats_of(trim_thresholds, parents, params)
    return [None if value is None else _bits_of(value) for value in found]


def _read_off(ordered: Tensor, density: float) -> int | None:
    count = selected_count(density, ordered.numel())
    return int(ordered[ordered.numel() - count]) if count else None


def trimmed(parent: Tensor, base: Tensor, bits: int | None) -> Tensor:
    """τ = parent − base where |τ|'s bits reach ``bits``, else 0: ``where(mask, τ, 0)`` bit
    for bit."""
    if bits is None:
        return torch.zeros_like(base)
    return _masked_difference(parent, base, bits)


def _masked_difference(parent: Tensor, base: Tensor, threshold_bits: int) -> Tensor:
    """parent − base where its |·|'s bits are >= ``threshold_bits``, else +0, in cache-sized
    blocks: an AND with a mask from the sign of |τ|_bits − threshold_bits (no ``where``:
    see ``_apply_between``)."""
    out = torch.empty(base.shape, dtype=torch.int32, device=base.device)
    flat = [parent.reshape(-1), base.reshape(-1), out.view(-1)]
    tau = torch.empty(min(_BLOCK, out.numel()), dtype=torch.float32, device=base.device)
    for start in range(0, out.numel(), _BLOCK):
        p, b, o = (x[start : start + _BLOCK] for x in flat)
        bits = torch.sub(p, b, out=tau[: p.numel()]).view(torch.int32)
        # |τ|'s bits: the sign bit cleared; then all ones where they reach the threshold.
        torch.bitwise_and(bits, 0x7FFFFFFF, out=o).sub_(threshold_bits)
        o.bitwise_not_().bitwise_right_shift_(31).bitwise_and_(bits)
    return out.view(torch.float32)


def _bits_of(value: float) -> int:
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32))


ROLES = ("direct", "thinking")


def index(parents: Parents) -> Prepared:
    """Each task vector's |τ| bits, sorted (on the host): any density's threshold is one read."""
    return {
        role: torch.sort((parent - parents.base).abs().view(torch.int32).reshape(-1)).values.cpu()
        for role, parent in zip(ROLES, (parents.direct, parents.thinking), strict=True)
    }


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    direct_bits, thinking_bits = threshold_bits(parents, params)
    base = parents.base
    return {
        "base": base,
        "trimmed_direct": trimmed(parents.direct, base, direct_bits),
        "trimmed_thinking": trimmed(parents.thinking, base, thinking_bits),
    }


def apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    base = prepared["base"]
    out = torch.empty(base.shape, dtype=torch.float32, device=base.device)
    apply_into(prepared, lam, params, stats, out)
    return out


def apply_into(
    prepared: Prepared, lam: float, params: dict[str, Any], stats: Any, out: Tensor
) -> None:
    """``apply`` written into ``out`` (any float dtype: each value rounded once)."""
    if 0.0 < lam < 1.0:
        _apply_between(prepared, lam, params["tie_break"], out)
    else:
        out.copy_(apply_elected(prepared, lam, params["tie_break"]))


def apply_elected(prepared: Prepared, lam: float, tie_break: str) -> Tensor:
    """The three steps as written: any λ (``apply`` takes the faster, equal path inside)."""
    direct, thinking = prepared["trimmed_direct"], prepared["trimmed_thinking"]
    combined = direct * (1.0 - lam) + thinking * lam
    elected = torch.sign(combined)
    if tie_break == "plus":
        # mergekit elects + where the weighted sum is 0; a weight of 0 then never agrees.
        elected = torch.where(combined == 0, 1.0, elected)
    direct_agrees = torch.sign(direct) == elected
    thinking_agrees = torch.sign(thinking) == elected
    if tie_break == "plus":
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


def _apply_between(prepared: Prepared, lam: float, tie_break: str, out: Tensor) -> None:
    """``apply`` for 0 < λ < 1, equal in value, without ``torch.where`` (on CPU a
    data-dependent select costs ~15 plain passes) and in cache-sized blocks.

    With both weights positive, where τ'_D and τ'_T have one sign (or are both 0) the
    result is ``combined``; elsewhere (one is 0, or the signs differ) it is the agreeing
    one: the larger of the two where combined > 0, the smaller where < 0, and where it is
    0 nothing (``zero``) or the positive one (``plus``). That is ``clamp(combined·∞, lo,
    hi)`` with 0·∞ = NaN sent to 0 or +∞; the two cases are then joined by multiplying with
    ``same`` ∈ {0, 1} and ``1 − same`` (x·1 + y·0 = x for finite x, y).
    """
    direct, thinking = prepared["trimmed_direct"], prepared["trimmed_thinking"]
    base = prepared["base"]
    flat = [x.reshape(-1) for x in (direct, thinking, base, out)]
    size = min(_BLOCK, out.numel())
    # A float32 destination is worked in; another gets the float32 sum, rounded once.
    cast = out.dtype != torch.float32
    work = [torch.empty(size, dtype=torch.float32, device=base.device) for _ in range(4 + cast)]
    zero_times_inf = math.inf if tie_break == "plus" else 0.0
    for start in range(0, out.numel(), _BLOCK):
        d, t, b, into = (x[start : start + _BLOCK] for x in flat)
        combined, spare, same, low = (x[: d.numel()] for x in work[:4])
        o = work[4][: d.numel()] if cast else into
        torch.mul(d, 1.0 - lam, out=combined)
        combined.add_(torch.mul(t, lam, out=spare))
        torch.sign(d, out=same).mul_(torch.sign(t, out=spare)).clamp_(min=0.0)
        torch.mul(combined, math.inf, out=o)
        o.nan_to_num_(nan=zero_times_inf, posinf=math.inf, neginf=-math.inf)
        torch.clamp(o, min=torch.minimum(d, t, out=low), max=torch.maximum(d, t, out=spare), out=o)
        o.mul_(torch.sub(same, 1.0, out=spare).neg_())
        torch.add(o.add_(combined.mul_(same)), b, out=into)


# Elements per block of _apply_between: its five work buffers stay in the L2/L3 cache.
_BLOCK = 1 << 18

METHOD = MergeMethod(
    name="ties",
    listed=5,
    summary="TIES: trim each task vector to its top density, elect signs, average agreeing.",
    prepare=prepare,
    apply=apply,
    apply_into=apply_into,
    index=index,
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
    elementwise=True,
    tensor_stats=trim_thresholds,
)
