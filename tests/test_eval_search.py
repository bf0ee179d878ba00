"""Adaptive λ search: exact on known curves, and on the embedded pair against a 0.01 grid."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from spectrum.cli import main
from spectrum.eval.search import GRID_STEP, Point, find_budget, find_phase, grid, phase_from_grid
from spectrum.eval.sweep import Sweeper, SweepSpec


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


PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
PAIR_ARGS = ["--limit", "5", "--greedy", "--max-new-tokens", "96", "--batch-size", "25"]


def test_phase_search_on_the_embedded_pair(tmp_path, capsys):
    """`spectrum search` on the shipped pair lands within ±0.05 of the phase change that a
    0.01 grid shows, with fewer than a third of the grid's evaluations."""
    torch.set_num_threads(1)
    db = tmp_path / "search.duckdb"
    models = ["--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking")]
    argv = ["search", *models, "--target", "phase", "--db", str(db), "--no-progress"]
    assert main([*argv, *PAIR_ARGS]) == 0
    out = capsys.readouterr().out
    found = re.search(r"at λ≈([\d.]+) .*; (\d+) evaluations vs 101", out)
    assert found, out
    lam, evaluations = float(found[1]), int(found[2])
    assert evaluations <= 101 / 3

    # The dense grid: every 0.01 step within ±0.06 of the answer, plus both ends (which set
    # the half-way level). Evaluations already in the DB are read back, not regenerated.
    spec = SweepSpec(
        direct=str(PAIR / "direct"),
        thinking=str(PAIR / "thinking"),
        limit=5,
        decoding=dict(do_sample=False, max_new_tokens=96),
        batch_size=25,
    )
    sweeper = Sweeper(spec, db, progress=False)
    try:
        window = [x for x in grid(0, 1, GRID_STEP) if abs(x - lam) <= 0.06]
        lams = sorted({0.0, *window, 1.0})
        values = [sweeper.point("linear", x, "synthetic").think_rate for x in lams]
    finally:
        sweeper.close()
    dense = phase_from_grid(lams, values)
    assert dense is not None and abs(dense[0] - lam) <= 0.05, (lam, dense, values)
