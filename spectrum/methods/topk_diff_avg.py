"""`topk_diff_avg`: θ_D, with the midpoint at the *most*-different top-k positions of |Δ|.

The reference code averages the least-different positions despite its docstring; docs/METHODS.md
calls that a bug and so do we. k = λ; see topk.py.
"""

from spectrum.methods.common.topk import midpoint, topk_method

METHOD = topk_method(
    name="topk_diff_avg",
    listed=10,
    summary="Direct weights, averaged with thinking at the top-k fraction (k = λ) of |Δ|.",
    rest=lambda direct, thinking: direct,
    top=midpoint,
    interpolates=False,
)
