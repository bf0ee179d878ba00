"""`lore`: low-rank estimation by coordinate descent (docs/METHODS.md; no official code).

Minimise Σ_i ‖θ_0 + δ_i − θ_i‖²_F + μ‖δ_i‖_* over i ∈ {direct, thinking}: starting from
δ_i = 0, each iteration sets θ_0 ← mean_i(θ_i − δ_i), then δ_i ← SVT_μ(θ_i − θ_0)
(matrices; 3-D tensors per expert; 1-D tensors take δ_i = θ_i − θ_0). θ = θ_0 +
(1−λ)δ_D + λδ_T. For two models this settles at once to midpoint + (2λ−1)·SVT_μ(Δ/2),
whatever θ_B is, so no base is used. `iterations` is an upper bound: the descent stops
once θ_0 no longer moves (to a few float32 ulps), which for two models is after the first
iteration. Cost: 2 SVDs per iteration per matrix, all in prepare.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spectrum.methods.common.affine import affine, apply_affine
from spectrum.methods.common.base import MergeMethod, Param, Parents, Prepared
from spectrum.methods.common.lowrank import singular_value_threshold

# θ_0 moving by less than this fraction of the largest parent weight (a few float32 ulps)
# ends the descent early.
CONVERGED = 1e-6


def _estimate(residual: Tensor, mu: float) -> Tensor:
    return singular_value_threshold(residual, mu) if residual.ndim >= 2 else residual


def _mean(tensors: list[Tensor]) -> Tensor:
    return sum(tensors) / len(tensors)


def prepare(parents: Parents, params: dict[str, Any], seed: int) -> Prepared:
    models = [parents.direct, parents.thinking]
    scale = max(float(model.abs().max()) for model in models)
    center = _mean(models)  # the first θ_0 step, from δ_i = 0
    for iteration in range(params["iterations"]):
        deltas = [_estimate(model - center, params["mu"]) for model in models]
        if iteration == params["iterations"] - 1:
            break
        next_center = _mean([model - delta for model, delta in zip(models, deltas, strict=True)])
        # Converged: another δ step would redo the same SVDs. For two models this is the
        # case after one iteration (SVT is odd, so δ_D ≈ −δ_T), which halves the SVD cost.
        if float((next_center - center).abs().max()) <= CONVERGED * scale:
            break
        center = next_center
    return affine(center + deltas[0], deltas[1] - deltas[0])


METHOD = MergeMethod(
    name="lore",
    listed=8,
    summary="LoRE: shared model + low-rank (singular-value-thresholded) deltas.",
    prepare=prepare,
    apply=apply_affine,
    params=(
        Param("mu", float, 0.1, "nuclear-norm weight μ: singular values shrink by μ", minimum=0.0),
        Param(
            "iterations",
            int,
            2,
            "most coordinate-descent iterations (stops once θ_0 settles)",
            minimum=1,
            maximum=100,
        ),
    ),
    interpolates=False,
)
