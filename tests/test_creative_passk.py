"""Pass@k for every k ≤ n: the estimator against brute-force enumeration of k-subsets, the
curves read from a real DuckDB file, the report's JSON and its figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spectrum.eval import figures, store
from spectrum.eval.metrics import pass_at_k, pass_at_k_curve
from spectrum.eval.results import summaries
from spectrum.eval.results_rows import pass_curves

REPO = Path(__file__).resolve().parents[1]


def _brute_force(outcomes: list[bool], k: int) -> float:
    """Share of the k-subsets of the n samples that hold at least one correct one."""
    subsets = list(combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force(outcomes, k), abs=1e-12)


def test_curve_averages_over_problems():
    counts = [(4, 0), (4, 1), (5, 3), (6, 6)]
    outcomes = [[True] * c + [False] * (n - c) for n, c in counts]
    curve = pass_at_k_curve(counts, 4)
    expected = [np.mean([_brute_force(o, k) for o in outcomes]) for k in range(1, 5)]
    assert curve == pytest.approx(expected, abs=1e-12)


def _db(tmp_path: Path) -> tuple[Path, dict]:
    """A results DB with two configurations, 6 problems × 5 samples each, seeded outcomes."""
    rng = np.random.default_rng(7)
    rows, truth = [], {}
    for method, lam, p_right in (("linear", 0.0, 0.2), ("linear", 1.0, 0.6)):
        cid = store.config_id({"method": method, "lam": lam})
        for problem in range(6):
            outcomes = (rng.random(5) < p_right).tolist()
            truth.setdefault(cid, []).append(outcomes)
            for sample, ok in enumerate(outcomes):
                rows.append(
                    dict(config_id=cid, run_id="r", method=method, lam=lam, benchmark="synthetic",
                         problem_id=f"p{problem}", sample_idx=sample, response="\\boxed{1}",
                         n_tokens=10, finished=True, thinks=lam > 0, extracted="1", gold="1",
                         correct=ok, do_sample=True, max_new_tokens=32,
                         created_at=datetime(2026, 1, 1))
                )  # fmt: skip
    db = tmp_path / "k.duckdb"
    with store.opened(db) as con:
        store.insert_frame(con, "samples", pd.DataFrame(rows))
    return db, truth


def test_curves_from_a_db_match_brute_force(tmp_path):
    db, truth = _db(tmp_path)
    with store.opened(db, read_only=True) as con:
        curves = pass_curves(summaries(con))
    assert len(curves) == 2 * 5
    for cid, problems in truth.items():
        mine = curves[curves["config_id"] == cid].sort_values("k")
        assert list(mine["k"]) == [1, 2, 3, 4, 5]
        expected = [np.mean([_brute_force(o, k) for o in problems]) for k in range(1, 6)]
        assert list(mine["pass"]) == pytest.approx(expected, abs=1e-12)
        assert mine["pass"].iloc[0] == pytest.approx(np.mean(problems))  # Pass@1 = Mean@k
    figure = figures.pass_at_k_vs_k(curves, "synthetic")
    assert len(figure.data) == 2 and all(list(t.x) == [1, 2, 3, 4, 5] for t in figure.data)


def test_report_json_and_html_carry_pass_at_every_k(tmp_path):
    db, truth = _db(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "spectrum", "report", "--db", str(db), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = [s for s in json.loads(done.stdout) if s["kind"] == "pass_at_k"]
    assert len(found) == 2
    for statement in found:
        assert list(statement["numbers"]) == [f"pass@{k}" for k in range(1, 6)]
    best = max(found, key=lambda s: s["numbers"]["pass@5"])["numbers"]["pass@5"]
    any_right = max(np.mean([any(o) for o in problems]) for problems in truth.values())
    assert best == pytest.approx(any_right)
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "spectrum", "report", "--db", str(db), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    page = out.read_text()
    assert "Pass@k for every k ≤ n" in page and "synthetic: style bleed" in page


def test_one_sample_per_problem_states_no_curve(tmp_path):
    from spectrum.eval.report import row_statements

    db, _ = _db(tmp_path)
    with store.opened(db, read_only=True) as con:
        table = summaries(con)
    curves = pass_curves(table)
    assert len(row_statements(curves, pd.DataFrame(), pd.DataFrame())) == 2
    only_first = curves[curves["k"] == 1]
    assert row_statements(only_first, pd.DataFrame(), pd.DataFrame()) == []
