"""`avg_topk_override`: the midpoint everywhere, θ_T at the top-k positions of |Δ| (k = λ)."""

from spectrum.methods.common.topk import midpoint, topk_method

METHOD = topk_method(
    name="avg_topk_override",
    listed=11,
    summary="Midpoint of the parents, with thinking's weights at the top-k fraction of |Δ|.",
    rest=midpoint,
    top=lambda direct, thinking: thinking,
    interpolates=False,
)
