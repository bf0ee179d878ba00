"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from spectrum.eval.metrics import ProblemSamples, bootstrap_ci, pass_at_k, summarize, vote_score


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 1, 0.3),
        (4, 0, 1, 0.0),
        (3, 1, 3, 1.0),  # n - c < k: every draw of 3 contains the correct one
        (8, 2, 4, 1 - 15 / 70),  # 1 - C(6,4)/C(8,4)
    ],
)
def test_pass_at_k_matches_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(2, 1, 3)


@pytest.mark.parametrize(
    ("answers", "correct", "expected"),
    [
        (["1", "2", "1", None], [True, False, True, False], 1.0),
        (["2", "2", "1"], [False, False, True], 0.0),
        (["1", "2"], [True, False], 0.5),  # a two-way tie: expected accuracy 1/2
        (["1", "2", "3", "3", "1"], [False, False, True, True, False], 0.5),
        ([None, None], [False, False], 0.0),  # nobody votes
        ([None, None, "7"], [False, False, True], 1.0),  # None does not outvote an answer
    ],
)
def test_vote_tie_rule(answers, correct, expected):
    assert vote_score(answers, correct) == pytest.approx(expected)


def test_bootstrap_ci_constant_and_two_point_samples():
    assert bootstrap_ci([0.25] * 7) == (0.25, 0.25)
    # Resampling [0, 1]: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 5 % and
    # 95 % quantiles are exactly 0 and 1.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_ci_matches_binomial_quantiles():
    # Bootstrap means of 6 ones and 4 zeros follow Binomial(10, 0.6)/10.
    def quantile(q):
        total = 0.0
        for j in range(11):
            total += math.comb(10, j) * 0.6**j * 0.4 ** (10 - j)
            if total >= q:
                return j / 10

    low, high = bootstrap_ci([1.0] * 6 + [0.0] * 4, n_boot=20000)
    assert low == pytest.approx(quantile(0.05), abs=0.1 + 1e-9)
    assert high == pytest.approx(quantile(0.95), abs=0.1 + 1e-9)
    assert low < 0.6 < high


def test_summarize_two_problems():
    problems = [
        ProblemSamples([True, False], ["4", "5"], [10, 30], [True, False], [True, True]),
        ProblemSamples([True, True], ["9", "9"], [4, 4], [True, True], [False, True]),
    ]
    stats = summarize(problems, pass_k=1)
    assert stats["mean"].value == pytest.approx((0.5 + 1.0) / 2)
    assert stats["pass"].value == pytest.approx((0.5 + 1.0) / 2)
    assert stats["vote"].value == pytest.approx((0.5 + 1.0) / 2)  # problem 1 is a tie
    assert stats["tokens"].value == pytest.approx((20 + 4) / 2)
    assert stats["think"].value == pytest.approx((0.5 + 1.0) / 2)
    assert stats["truncated"].value == pytest.approx((0.0 + 0.5) / 2)
    assert stats["tokens"].low <= 12 <= stats["tokens"].high
    assert summarize(problems, pass_k=2)["pass"].value == pytest.approx(1.0)
