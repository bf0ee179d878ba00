"""Metrics over k samples per problem, with 90 % intervals that stay honest at 0 or n successes.

Every metric is first computed per problem, then averaged over problems. Intervals
(``INTERVALS``):

* ``auto``: one sample per problem and a 0/1 metric → the Wilson score interval (a
  bootstrap of 50/50 successes has zero width, Wilson's does not); otherwise a percentile
  bootstrap that resamples problems (not samples), because problems are the unit the
  benchmark draws.
* ``t_runs``: the ThinkingSpectrum protocol: sample j of every problem is run j; a
  Student-t interval over the k run means (needs k ≥ 2; k = 1 falls back to ``auto``).

Comparisons are paired over the problems both configurations answered (``compare``): the
interval of the accuracy difference (Newcombe's paired Wilson interval at k = 1, paired
bootstrap otherwise, or Student-t over paired runs) and of the token difference.

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
from scipy.stats import norm, t

from spectrum.errors import UserError

CI_LEVEL = 0.90
N_BOOTSTRAP = 2000
INTERVALS = ("auto", "t_runs")
# An improvement must save more than this many tokens, and this share of the reference's.
MIN_TOKEN_SAVING = 1.0
MIN_TOKEN_SHARE = 0.02


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k = 1 − C(n−c, k)/C(n, k), as a stable running product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_curve(counts: Sequence[tuple[int, int]], most: int) -> list[float]:
    """Pass@1 … Pass@``most``, each averaged over problems; ``counts``: (n, c) per problem,
    every n at least ``most``."""
    return [float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in range(1, most + 1)]


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


def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2.0))


def wilson_ci(successes: int, n: int, *, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (never zero width, stays in [0, 1])."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = _z(level), successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(center - half, 0.0)), float(min(center + half, 1.0))


def newcombe_paired_ci(
    both: int, only_a: int, only_b: int, neither: int, *, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Interval of p_A − p_B for paired 0/1 outcomes (Newcombe 1998, method 10): Wilson
    intervals of both proportions combined with the phi correlation of the 2×2 table."""
    n = both + only_a + only_b + neither
    if n == 0:
        return (float("nan"), float("nan"))
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = wilson_ci(both + only_a, n, level=level)
    low_b, high_b = wilson_ci(both + only_b, n, level=level)
    spread = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / np.sqrt(spread) if spread > 0 else 0.0
    below = (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2
    above = (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2
    diff = p_a - p_b
    return float(diff - np.sqrt(max(below, 0.0))), float(diff + np.sqrt(max(above, 0.0)))


def t_ci(values: Sequence[float], *, level: float = CI_LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (TS: one value per sampling run)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return (float("nan"), float("nan"))
    half = t.ppf(0.5 + level / 2.0, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    method: str = "bootstrap"  # how the interval was made: wilson, bootstrap, t_runs


def estimate(per_problem: Sequence[float], *, seed: int = 0) -> Estimate:
    """Mean of per-problem values and its percentile bootstrap interval over problems."""
    low, high = bootstrap_ci(per_problem, seed=seed)
    return Estimate(float(np.mean(per_problem)) if len(per_problem) else float("nan"), low, high)


def run_estimate(runs: np.ndarray) -> Estimate:
    """``runs``: problems × k; the Student-t interval over the k run means (TS)."""
    means = runs.mean(axis=0)
    return Estimate(float(runs.mean()), *t_ci(means), "t_runs")


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
    problems: Sequence[ProblemSamples],
    *,
    pass_k: int = 1,
    seed: int = 0,
    interval: str = "auto",
) -> dict[str, Estimate]:
    """Mean@k, Pass@``pass_k``, Vote@k, Token#N, Think#R and truncation rate with intervals
    (``interval``: see the module docstring).

    Token#N is averaged per problem first, so a problem with long answers weighs as much
    as any other (with equal k per problem this equals the mean over all responses).
    """
    check_interval(interval)
    metrics = {name: [f(p) for p in problems] for name, f in PER_PROBLEM.items()}
    metrics["pass"] = [pass_at_k(len(p.correct), int(sum(p.correct)), pass_k) for p in problems]
    one_sample = bool(problems) and all(len(p.correct) == 1 for p in problems)
    found = {}
    for name, values in metrics.items():
        binary = one_sample and name != "tokens"  # Token#N is a count, never 0/1
        found[name] = _wilson(values) if binary else estimate(values, seed=seed)
    k = min((len(p.correct) for p in problems), default=0)
    if interval == "t_runs" and k >= 2:
        found["mean"] = run_estimate(_runs(problems, "correct", k))
        found["tokens"] = run_estimate(_runs(problems, "n_tokens", k))
    return found


def check_interval(interval: str) -> None:
    if interval not in INTERVALS:
        raise UserError(f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}")


def _wilson(values: Sequence[float]) -> Estimate:
    return Estimate(float(np.mean(values)), *wilson_ci(int(sum(values)), len(values)), "wilson")


def _runs(problems: Sequence[ProblemSamples], field: str, k: int) -> np.ndarray:
    """problems × k: sample j of every problem is sampling run j."""
    return np.array([list(getattr(p, field))[:k] for p in problems], dtype=float)


@dataclass(frozen=True)
class Difference:
    """A candidate against a reference, paired over the same problems (candidate −
    reference), and what it allows to say."""

    n_problems: int
    accuracy: Estimate
    tokens: Estimate
    reference_tokens: float
    margin: float
    verdict: str  # "improvement" or "not distinguishable"

    @property
    def improves(self) -> bool:
        return self.verdict == IMPROVEMENT


IMPROVEMENT = "improvement"
NOT_DISTINGUISHABLE = "not distinguishable"


def needed_saving(reference_tokens: float) -> float:
    """Tokens an improvement must save for sure: more than 1 token and than 2 %."""
    return max(MIN_TOKEN_SAVING, MIN_TOKEN_SHARE * reference_tokens)


def compare(
    candidate: Sequence[ProblemSamples],
    reference: Sequence[ProblemSamples],
    *,
    margin: float = 0.0,
    interval: str = "auto",
    seed: int = 0,
) -> Difference:
    """``candidate`` vs ``reference`` on the same problems, in the same order.

    An improvement needs the accuracy difference's lower bound ≥ −``margin`` and the token
    difference's upper bound below −max(1 token, 2 % of the reference's Token#N): fewer
    tokens for sure, no accuracy lost beyond the margin. Anything else is not
    distinguishable from no improvement.
    """
    check_interval(interval)
    if len(candidate) != len(reference):
        raise ValueError("a paired comparison needs the same problems on both sides")
    k = min((len(p.correct) for p in (*candidate, *reference)), default=0)
    if interval == "t_runs" and k >= 2:
        accuracy = run_estimate(_runs(candidate, "correct", k) - _runs(reference, "correct", k))
        tokens = run_estimate(_runs(candidate, "n_tokens", k) - _runs(reference, "n_tokens", k))
    else:
        accuracy = _accuracy_difference(candidate, reference, seed)
        token_diffs = [
            PER_PROBLEM["tokens"](a) - PER_PROBLEM["tokens"](b)
            for a, b in zip(candidate, reference, strict=True)
        ]
        tokens = estimate(token_diffs, seed=seed)
    reference_tokens = float(np.mean([PER_PROBLEM["tokens"](p) for p in reference] or [np.nan]))
    holds = accuracy.low >= -margin and tokens.high < -needed_saving(reference_tokens)
    verdict = IMPROVEMENT if holds else NOT_DISTINGUISHABLE
    return Difference(len(candidate), accuracy, tokens, reference_tokens, margin, verdict)


def _accuracy_difference(
    candidate: Sequence[ProblemSamples], reference: Sequence[ProblemSamples], seed: int
) -> Estimate:
    """Newcombe's paired interval when every problem has one sample on both sides, a
    bootstrap of the per-problem differences otherwise."""
    if all(len(p.correct) == 1 for p in (*candidate, *reference)):
        pairs = Counter(
            (bool(a.correct[0]), bool(b.correct[0]))
            for a, b in zip(candidate, reference, strict=True)
        )
        counts = [pairs[(True, True)], pairs[(True, False)], pairs[(False, True)],
                  pairs[(False, False)]]  # fmt: skip
        n = sum(counts)
        value = (counts[1] - counts[2]) / n if n else float("nan")
        return Estimate(value, *newcombe_paired_ci(*counts), "newcombe")
    diffs = [
        PER_PROBLEM["mean"](a) - PER_PROBLEM["mean"](b)
        for a, b in zip(candidate, reference, strict=True)
    ]
    value = float(np.mean(diffs)) if diffs else float("nan")
    return Estimate(value, *bootstrap_ci(diffs, seed=seed), "bootstrap")
