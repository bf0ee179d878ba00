"""`spectrum report` on a DB written by the store: self-contained HTML with every method's data."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime

import pandas as pd
import pytest

from spectrum.cli import main
from spectrum.eval import figures, store
from spectrum.eval.results import improvements, pareto_area, phase_changes, rank_methods, summaries

LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _rows(method: str, lam: float) -> list[dict]:
    """Two problems, two samples: thinking switches on above λ=0.4, accuracy rises with it,
    tokens grow with λ except that linear at λ=0.75 is cheaper than the thinking parent."""
    thinks = lam > 0.4
    tokens = 10 + int(100 * lam) - (30 if (method == "linear" and lam == 0.75) else 0)
    rows = []
    for problem in ("p1", "p2"):
        for sample in (0, 1):
            correct = thinks and not (problem == "p2" and sample == 1 and lam < 0.75)
            rows.append(
                dict(
                    config_id=f"{method}-{lam}", run_id="r", method=method, lam=lam,
                    benchmark="synthetic", problem_id=problem, sample_idx=sample,
                    level=int(problem[1]),
                    response=("<think>..</think>" if thinks else "") + "\\boxed{1}",
                    n_tokens=tokens, finished=True, thinks=thinks,
                    extracted="1" if correct else "2", gold="1", correct=correct,
                    latency_s=0.1, created_at=datetime(2026, 1, 1),
                )
            )  # fmt: skip
    return rows


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "results.duckdb"
    con = store.connect(path)
    frame = pd.DataFrame([r for m in ("linear", "ties") for lam in LAMS for r in _rows(m, lam)])
    store.insert_frame(con, "samples", frame)
    con.close()
    return path


def test_summaries_improvements_and_phase(db):
    con = store.connect(db, read_only=True)
    table = summaries(con)
    view = con.execute("SELECT method, lam, accuracy, tokens FROM aggregates").df()
    pareto = con.execute("SELECT method, lam FROM pareto WHERE method = 'linear'").fetchall()
    con.close()
    row = table[(table["method"] == "linear") & (table["lam"] == 0.5)].iloc[0]
    assert row["mean"] == pytest.approx(0.75)  # p1: 2/2, p2: 1/2
    assert row["vote"] == pytest.approx(0.75)  # p2 is a 1–1 tie: 1/2
    assert row["pass"] == pytest.approx(1.0)  # k = 2
    assert row["think"] == 1.0 and row["tokens"] == 60
    merged = view.merge(table, on=["method", "lam"])
    assert (merged["accuracy"] - merged["mean"]).abs().max() < 1e-12
    better = improvements(table)
    assert set(zip(better["method"], better["lam"], better["parent"], strict=True)) == {
        ("linear", 0.75, "thinking"),
        ("ties", 0.75, "thinking"),  # as accurate as the thinking parent, 25 tokens fewer
    }
    # Paired over the same two problems: no accuracy lost on either, tokens fewer by a
    # constant 55 and 25 (beyond the 2.2 tokens an improvement must save): both hold.
    assert better["improves"].all() and set(better["verdict"]) == {"improvement"}
    assert sorted(better["tokens_diff"]) == [-55.0, -25.0]
    assert sorted(better["tokens_diff_high"]) == [-55.0, -25.0]
    assert (better["acc_diff_low"] == 0.0).all() and (better["n_paired"] == 2).all()
    assert sorted(pareto) == [("linear", 0.0), ("linear", 0.75)]
    none = improvements(table[table["lam"].isin([0.0, 1.0])])  # parents only
    assert none.empty and "improves" in none.columns
    phases = phase_changes(table).set_index("method")
    assert phases.loc["linear", "low"] == 0.25 and phases.loc["linear", "high"] == 0.5
    assert phases.loc["linear", "lam"] == pytest.approx(0.375)


def test_report_is_self_contained_with_every_method(db, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js is inlined
    traces = [
        json.loads(match)
        for match in re.findall(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", page)
    ]
    names = {t.get("name") for fig in traces for t in fig}
    assert {"linear", "ties", "direct parent", "thinking parent"} <= names
    assert "Pareto improvement on a parent" in names
    assert "linear λ=0.75 beats the thinking parent" in page
    assert {"synthetic:L1", "synthetic:L2"} <= names  # accuracy vs tokens per level
    # Both levels start thinking above λ=0.4: half-way between the 0.25 and 0.5 grid points.
    assert "synthetic:L2: linear Think#R crosses half-way at λ≈0.375" in page
    assert "synthetic:L2: ties Think#R crosses half-way at λ≈0.375" in page
    for method in ("linear", "ties"):  # per level, for every method in the DB
        assert f'<div id="levels-{method}">' in page
        assert f"{method}: accuracy vs Token#N per level" in page
    # CI bands are fills only: no markers at their edges that look like another series.
    bands = [t for fig in traces for t in fig if t.get("fill") == "toself"]
    assert bands and all(t["mode"] == "lines" and t["line"]["width"] == 0 for t in bands)
    # One colour per method in every figure.
    for method in ("linear", "ties"):
        colors = {
            (t.get("line") or {}).get("color") or (t.get("marker") or {}).get("color")
            for fig in traces
            for t in fig
            if t.get("name") == method
        }
        assert colors == {figures.color(method)}


def test_report_is_readable_like_any_file_the_user_writes(db, tmp_path):
    out = tmp_path / "report.html"
    old = os.umask(0o022)
    try:
        assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_methods_rank_by_pareto_area(db):
    con = store.connect(db, read_only=True)
    table = summaries(con)
    con.close()
    # Same accuracy at every λ, but linear at λ=0.75 spends 30 tokens less.
    assert rank_methods(table, "synthetic") == ["linear", "ties"]
    one = pd.DataFrame({"tokens": [0.0], "mean": [1.0]})
    assert pareto_area(one, 10.0) == 1.0  # perfect accuracy for nothing: the whole box
    half = pd.DataFrame({"tokens": [5.0, 10.0], "mean": [0.5, 1.0]})
    assert pareto_area(half, 10.0) == pytest.approx(0.25)


def test_report_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["report"])
    assert main(["report", "--db", str(tmp_path / "none.duckdb")]) == 2
