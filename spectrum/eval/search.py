"""Adaptive λ search: find the interesting λ with a fraction of a uniform 0.01 grid's evaluations.

Both targets start from a coarse grid and then bisect, so each costs about
``(hi − lo)/coarse + log2(coarse/resolution)`` evaluations instead of
``(hi − lo)/0.01 + 1``.

* ``phase``: the λ where the metric (Think#R by default) crosses half-way between its
  values at the two ends of the range. The coarse step with the largest rise across that
  level is bisected down to ``resolution``; the answer is interpolated inside the last
  bracket. ``phase_from_grid`` applies the same rule to a dense grid, so the two agree by
  construction when the metric is monotone, and the test checks they agree on a real pair.
* ``budget``: the most accurate λ whose Token#N stays at most ``max_tokens``. The boundary
  between the last affordable coarse λ and the next is bisected (Token#N grows with λ),
  then the most accurate affordable λ evaluated wins (ties: fewer tokens).

``prefetch``, when given, is called with each round's λ probes before they are read one at
a time: the coarse grid is one round, so a Ray pool evaluates it all in parallel (each
bisection step is a round of one λ, whose cells the pool still spreads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

GRID_STEP = 0.01


@dataclass(frozen=True)
class Point:
    accuracy: float
    tokens: float
    think_rate: float

    def metric(self, name: str) -> float:
        return {"think": self.think_rate, "accuracy": self.accuracy}[name]


@dataclass
class SearchResult:
    target: str
    lam: float | None
    bracket: tuple[float, float] | None
    evaluated: dict[float, Point] = field(default_factory=dict)
    grid_evaluations: int = 0
    note: str = ""

    @property
    def evaluations(self) -> int:
        return len(self.evaluated)


def grid(lo: float, hi: float, step: float) -> list[float]:
    count = int(round((hi - lo) / step))
    return [round(lo + i * step, 6) for i in range(count + 1)]


def _memo(evaluate: Callable[[float], Point], evaluated: dict[float, Point]):
    def f(lam: float) -> Point:
        lam = round(lam, 6)
        if lam not in evaluated:
            evaluated[lam] = evaluate(lam)
        return evaluated[lam]

    return f


def _steepest_crossing(
    lams: list[float], values: list[float], level: float
) -> tuple[float, float] | None:
    """The adjacent pair (a, b) that crosses ``level`` with the largest rise; None if none."""
    pairs = [
        (values[i + 1] - values[i], lams[i], lams[i + 1])
        for i in range(len(lams) - 1)
        if values[i] < level <= values[i + 1]
    ]
    return max(pairs)[1:] if pairs else None


def _bisect(
    a: float, b: float, past: Callable[[float], bool], resolution: float
) -> tuple[float, float]:
    """Halve [a, b] until it is ``resolution`` wide, keeping ``past`` false at a, true at b."""
    while b - a > resolution + 1e-9:
        mid = round((a + b) / 2, 6)
        a, b = (a, mid) if past(mid) else (mid, b)
    return a, b


def _interpolate(a: float, b: float, fa: float, fb: float, level: float) -> float:
    return a + (level - fa) / (fb - fa) * (b - a) if fb != fa else (a + b) / 2


def _level(values: list[float]) -> tuple[float, float]:
    """(sign, level): the half-way level, with the sign that makes the change a rise."""
    sign = 1.0 if values[-1] >= values[0] else -1.0
    return sign, sign * (values[0] + values[-1]) / 2


def phase_from_grid(lams: list[float], values: list[float]) -> tuple[float, float, float] | None:
    """(λ, a, b): the half-way crossing of the steepest rising step of a dense grid; None
    when the metric ends where it started."""
    if values[0] == values[-1]:
        return None
    sign, level = _level(values)
    signed = [sign * v for v in values]
    pair = _steepest_crossing(lams, signed, level)
    if pair is None:
        return None
    a, b = pair
    fa, fb = signed[lams.index(a)], signed[lams.index(b)]
    return _interpolate(a, b, fa, fb, level), a, b


def find_phase(
    evaluate: Callable[[float], Point],
    *,
    metric: str = "think",
    lo: float = 0.0,
    hi: float = 1.0,
    coarse: float = 0.125,
    resolution: float = GRID_STEP,
    prefetch: Callable[[list[float]], None] | None = None,
) -> SearchResult:
    result = SearchResult("phase", None, None, grid_evaluations=len(grid(lo, hi, GRID_STEP)))
    f = _memo(evaluate, result.evaluated)
    coarse_lams = grid(lo, hi, coarse)
    if prefetch is not None:
        prefetch(coarse_lams)
    values = [f(lam).metric(metric) for lam in coarse_lams]
    sign, level = _level(values)
    pair = _steepest_crossing(coarse_lams, [sign * v for v in values], level)
    if pair is None or values[0] == values[-1]:
        result.note = f"{metric} does not change between λ={lo:g} and λ={hi:g}"
        return result
    a, b = _bisect(*pair, lambda lam: sign * f(lam).metric(metric) >= level, resolution)
    fa, fb = sign * f(a).metric(metric), sign * f(b).metric(metric)
    result.lam, result.bracket = _interpolate(a, b, fa, fb, level), (a, b)
    return result


def find_budget(
    evaluate: Callable[[float], Point],
    max_tokens: float,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    coarse: float = 0.125,
    resolution: float = GRID_STEP,
    prefetch: Callable[[list[float]], None] | None = None,
) -> SearchResult:
    result = SearchResult("budget", None, None, grid_evaluations=len(grid(lo, hi, GRID_STEP)))
    f = _memo(evaluate, result.evaluated)
    coarse_lams = grid(lo, hi, coarse)
    if prefetch is not None:
        prefetch(coarse_lams)
    affordable = [lam for lam in coarse_lams if f(lam).tokens <= max_tokens]
    if not affordable:
        result.note = f"no λ in [{lo:g}, {hi:g}] stays under {max_tokens:g} tokens"
        return result
    a = max(affordable)
    if a < hi:
        b = coarse_lams[coarse_lams.index(a) + 1]
        result.bracket = _bisect(a, b, lambda lam: f(lam).tokens > max_tokens, resolution)
    best = max(
        (lam for lam, p in result.evaluated.items() if p.tokens <= max_tokens),
        key=lambda lam: (result.evaluated[lam].accuracy, -result.evaluated[lam].tokens),
    )
    result.lam = best
    return result
