"""Adaptive λ search: exact on known curves, and on the embedded pair against a 0.01 grid."""

from __future__ import annotations

import math

import pytest

from spectrum.eval.search import GRID_STEP, Point, find_budget, find_phase, grid, phase_from_grid


def _sigmoid_pair(center: float, width: float = 0.03):
    def evaluate(lam: float) -> Point:
        think = 1 / (1 + math.exp(-(lam - center) / width))
        return Point(accuracy=0.2 + 0.6 * think, tokens=20 + 300 * lam * think, think_rate=think)

    return evaluate


@pytest.mark.parametrize("center", [0.37, 0.55, 0.62, 0.81])
def test_phase_on_a_sigmoid(center):
    evaluate = _sigmoid_pair(center)
    found = find_phase(evaluate)
    # The half-way level of a symmetric sigmoid whose ends sit near 0 and 1 is its centre.
    assert found.lam == pytest.approx(center, abs=0.01)
    assert found.bracket[0] <= found.lam <= found.bracket[1]
    assert found.bracket[1] - found.bracket[0] <= GRID_STEP
    assert found.grid_evaluations == 101
    assert found.evaluations <= 101 / 3
    lams = grid(0, 1, GRID_STEP)
    dense = phase_from_grid(lams, [evaluate(lam).think_rate for lam in lams])
    assert found.lam == pytest.approx(dense[0], abs=0.01)


def test_phase_of_a_falling_metric_and_of_a_flat_one():
    falling = find_phase(lambda lam: Point(1 - lam**3, 10.0, 0.0), metric="accuracy")
    assert falling.lam == pytest.approx(0.5 ** (1 / 3), abs=0.01)  # 1 − λ³ = 1/2
    flat = find_phase(lambda lam: Point(0.5, 10.0, 0.0))
    assert flat.lam is None and "does not change" in flat.note


def test_budget_picks_the_most_accurate_affordable_lam():
    evaluate = _sigmoid_pair(0.6)
    found = find_budget(evaluate, max_tokens=150)
    lams = grid(0, 1, GRID_STEP)
    affordable = [lam for lam in lams if evaluate(lam).tokens <= 150]
    best_on_grid = max(affordable, key=lambda lam: evaluate(lam).accuracy)
    assert evaluate(found.lam).tokens <= 150
    # Accuracy rises with λ here, so the best affordable λ is the budget boundary, which the
    # search locates to within one grid step.
    assert found.lam == pytest.approx(best_on_grid, abs=GRID_STEP)
    assert found.evaluations <= 101 / 3
    nothing = find_budget(evaluate, max_tokens=5)
    assert nothing.lam is None and "stays under" in nothing.note
