"""Metrics over k samples per problem, with 90 % bootstrap confidence intervals over problems.

Every metric is first computed per problem, then averaged over problems; the CI resamples
problems (not samples), because problems are the unit the benchmark draws.

Vote@k tie rule: unextractable answers (None) do not vote. When several answers share the
top count, the problem scores 1/m if the correct answer is one of the m tied answers and 0
otherwise, i.e. the expected accuracy of breaking the tie uniformly at random. This makes
Vote@k deterministic and independent of sample order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CI_LEVEL = 0.90
N_BOOTSTRAP = 2000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k = 1 − C(n−c, k)/C(n, k), as a stable running product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def vote_score(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Vote@k of one problem (see the module docstring for the tie rule)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    right = {a for a, ok in zip(answers, correct, strict=True) if ok and a is not None}
    return sum(a in right for a in tied) / len(tied)


def bootstrap_ci(
    values: Sequence[float],
    *,
    level: float = CI_LEVEL,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-problem ``values``."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


def estimate(per_problem: Sequence[float], *, seed: int = 0) -> Estimate:
    low, high = bootstrap_ci(per_problem, seed=seed)
    return Estimate(float(np.mean(per_problem)) if len(per_problem) else float("nan"), low, high)


@dataclass(frozen=True)
class ProblemSamples:
    """The k samples of one problem under one configuration."""

    correct: Sequence[bool]
    answers: Sequence[str | None]
    n_tokens: Sequence[int]
    thinks: Sequence[bool]
    finished: Sequence[bool]


PER_PROBLEM: dict[str, Callable[[ProblemSamples], float]] = {
    "mean": lambda p: float(np.mean(p.correct)),
    "vote": lambda p: vote_score(p.answers, p.correct),
    "tokens": lambda p: float(np.mean(p.n_tokens)),
    "think": lambda p: float(np.mean(p.thinks)),
    "truncated": lambda p: 1.0 - float(np.mean(p.finished)),
}


def summarize(
    problems: Sequence[ProblemSamples], *, pass_k: int = 1, seed: int = 0
) -> dict[str, Estimate]:
    """Mean@k, Pass@``pass_k``, Vote@k, Token#N, Think#R and truncation rate with CIs.

    Token#N is averaged per problem first, so a problem with long answers weighs as much
    as any other (with equal k per problem this equals the mean over all responses).
    """
    metrics = {name: [f(p) for p in problems] for name, f in PER_PROBLEM.items()}
    metrics["pass"] = [pass_at_k(len(p.correct), int(sum(p.correct)), pass_k) for p in problems]
    return {name: estimate(values, seed=seed) for name, values in metrics.items()}
