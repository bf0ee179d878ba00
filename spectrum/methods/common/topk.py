"""What the three "arbitrary" Top-K strategies share (docs/METHODS.md).

The strength is k = λ, the fraction of positions selected by |Δ| = |θ_T − θ_D|: over the
whole model (`scope=global`, default, as in the paper) or per tensor (`per_tensor`). Each
strategy is a pair (rest, top): θ = rest everywhere except the selected positions, which
take top. Selection and tie rule: docs/METHODS.md (count = round-half-up of
k·N; everything >= the count-th largest |Δ|; k = 0 selects nothing, k = 1 everything).

``prepare`` keeps rest, top ^ rest and |Δ|, so ``apply`` is a branch-free select once the
threshold is known: on CPU ``torch.where`` with a data-dependent mask costs ~15 integer
passes (measured), so the select is done on the float32 bit patterns instead, in
cache-sized blocks: ``rest ^ ((top ^ rest) & mask)``, with the mask from the sign of
``|Δ|_bits − threshold_bits`` (non-negative floats order as their bits). It picks
exactly top or rest, bit for bit, as ``where`` did. With global scope, ``global_stats``
returns a ``MagnitudeThreshold`` over every prepared |Δ|: one coarse pass, then one
refinement pass for all of ``lams``. Asked later for a k it has not seen (the live
merger's λ slider), ``apply`` gets the exact new threshold from ``stats.threshold(k)``: a
lookup once the live merger has called ``stats.index()`` (every |Δ|'s bits sorted once), or
else at most one more pass over the prepared |Δ| (the coarse histogram is cached).
``apply_into`` writes the select straight into the model's parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared, PreparedStream
from spectrum.methods.common.magnitude import MagnitudeThreshold, check_fraction

SCOPES = ("global", "per_tensor")
SCOPE_PARAM = Param(
    "scope",
    str,
    "global",
    "where the top-k fraction of |thinking − direct| is taken: whole model or each tensor",
    choices=SCOPES,
)

Pick = Callable[[Tensor, Tensor], Tensor]


def midpoint(direct: Tensor, thinking: Tensor) -> Tensor:
    return (direct + thinking) * 0.5


def _global_stats(
    stream: PreparedStream, lams: Iterable[float], params: dict[str, Any]
) -> MagnitudeThreshold | None:
    lams = list(lams)
    for lam in lams:  # fail before the engine writes anything, whatever the scope
        check_fraction(lam)
    if params["scope"] != "global":
        return None
    threshold = MagnitudeThreshold(lambda: (prepared["magnitude"] for _, prepared in stream()))
    threshold.prefetch(lams)
    return threshold


def _threshold(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> float | None:
    if params["scope"] == "global":
        if not isinstance(stats, MagnitudeThreshold):
            raise ValueError("global Top-K needs its threshold: call global_stats before apply")
        return stats.threshold(lam)
    magnitude = prepared["magnitude"]
    return MagnitudeThreshold(lambda: (magnitude,)).threshold(lam)


def _apply(prepared: Prepared, lam: float, params: dict[str, Any], stats: Any) -> Tensor:
    rest = prepared["rest"]
    out = torch.empty(rest.shape, dtype=torch.float32, device=rest.device)
    _apply_into(prepared, lam, params, stats, out)
    return out


def _apply_into(
    prepared: Prepared, lam: float, params: dict[str, Any], stats: Any, out: Tensor
) -> None:
    threshold = _threshold(prepared, lam, params, stats)
    rest = prepared["rest"]
    if threshold is None:
        out.copy_(rest)
        return
    threshold_bits = int(torch.tensor(threshold, dtype=torch.float32).view(torch.int32))
    flat = [x.reshape(-1).view(torch.int32) for x in (prepared["magnitude"], prepared["flip"])]
    flat += [rest.reshape(-1).view(torch.int32), out.view(-1)]
    # A float32 destination takes the bits as they are; another is cast block by block.
    cast = out.dtype != torch.float32
    work = torch.empty(min(_BLOCK, out.numel()), dtype=torch.int32, device=rest.device)
    for start in range(0, out.numel(), _BLOCK):  # blocks: the temporaries stay in the cache
        magnitude, flip, kept, into = (x[start : start + _BLOCK] for x in flat)
        merged = work[: into.numel()] if cast else into.view(torch.int32)
        # ~(|Δ| − threshold) >> 31: all ones where |Δ| >= threshold (both non-negative int32).
        torch.sub(magnitude, threshold_bits, out=merged).bitwise_not_().bitwise_right_shift_(31)
        merged.bitwise_and_(flip).bitwise_xor_(kept)  # rest ^ ((top ^ rest) & mask)
        if cast:
            into.copy_(merged.view(torch.float32))


_BLOCK = 1 << 18  # elements per block of _apply


def topk_method(
    name: str, summary: str, rest: Pick, top: Pick, interpolates: bool, listed: int
) -> MergeMethod:
    """A Top-K strategy: ``rest(direct, thinking)`` outside the top-k positions, ``top`` in."""

    def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
        direct, thinking = parents.direct, parents.thinking
        kept = rest(direct, thinking)
        # flip = top ^ rest, bitwise (a new tensor: top may be a parent's own): the select
        # is then rest ^ (flip & mask), one operation fewer per set.
        flip = torch.bitwise_xor(top(direct, thinking).view(torch.int32), kept.view(torch.int32))
        return {"rest": kept, "flip": flip, "magnitude": (thinking - direct).abs()}

    return MergeMethod(
        name=name,
        summary=summary,
        prepare=prepare,
        apply=_apply,
        apply_into=_apply_into,
        params=(SCOPE_PARAM,),
        global_stats=_global_stats,
        interpolates=interpolates,
        listed=listed,
    )
