"""`topk_replace`: θ_D, with θ_T at the top-k positions of |Δ| (k = λ; see topk.py)."""

from spectrum.methods.common.topk import topk_method

METHOD = topk_method(
    name="topk_replace",
    listed=9,
    summary="Direct weights, with thinking's at the top-k fraction (k = λ) of |Δ| positions.",
    rest=lambda direct, thinking: direct,
    top=lambda direct, thinking: thinking,
    interpolates=True,
)
