"""spectrum.dashboard.explorer over a real results DB made by a real sweep of a tiny pair."""

from __future__ import annotations

import duckdb
import pytest

from spectrum.dashboard.explorer import load_results, sample_responses
from spectrum.errors import UserError
from spectrum.eval.sweep import SweepSpec, run_sweep


def sweep(pair, db, lams):
    spec = SweepSpec(
        direct=str(pair["direct"]),
        thinking=str(pair["thinking"]),
        lams=lams,
        limit=1,
        levels=(1, 2),
        decoding={"max_new_tokens": 12, "do_sample": False},
    )
    return run_sweep(spec, db, progress=False)


@pytest.fixture(scope="module")
def results_db(tiny_pair, tmp_path_factory):
    db = tmp_path_factory.mktemp("explorer") / "results.duckdb"
    sweep(tiny_pair, db, (0.0, 0.5, 1.0))
    return db


def test_figures_plot_what_the_samples_say(results_db):
    results = load_results(results_db)
    assert results.benchmarks == ["synthetic"]
    assert results.lams("synthetic", "linear") == [0.0, 0.5, 1.0]
    plots = results.figures("synthetic", ["linear"])
    assert set(plots) == {"pareto", "mean", "tokens", "think", "bleed"}
    line = next(t for t in plots["tokens"].data if t.mode == "lines+markers")
    with duckdb.connect(str(results_db), read_only=True) as con:
        # Token#N: per problem first, then over problems (every problem weighs the same).
        expected = con.execute(
            "SELECT lam, avg(tokens) FROM (SELECT lam, problem_id, avg(n_tokens) AS tokens "
            "FROM samples GROUP BY lam, problem_id) GROUP BY lam ORDER BY lam"
        ).fetchall()
    assert list(line.x) == [lam for lam, _ in expected]
    assert list(line.y) == pytest.approx([tokens for _, tokens in expected])
    pareto_names = {trace.name for trace in plots["pareto"].data}
    assert {"direct parent", "thinking parent"} <= pareto_names


def test_sample_responses_are_those_stored_for_the_lam(results_db):
    frame = sample_responses(results_db, "synthetic", "linear", 0.5)
    with duckdb.connect(str(results_db), read_only=True) as con:
        stored = con.execute(
            "SELECT response FROM samples WHERE lam = 0.5 ORDER BY problem_id"
        ).fetchall()
    assert list(frame["response"]) == [response for (response,) in stored]
    assert len(frame) == 2


def test_a_changed_database_is_read_again(tiny_pair, tmp_path):
    db = tmp_path / "growing.duckdb"
    sweep(tiny_pair, db, (0.0,))
    assert load_results(db).lams("synthetic", "linear") == [0.0]
    sweep(tiny_pair, db, (1.0,))
    assert load_results(db).lams("synthetic", "linear") == [0.0, 1.0]


def test_bad_databases_are_user_errors(results_db, tmp_path):
    with pytest.raises(UserError, match="no results database"):
        load_results(tmp_path / "absent.duckdb")
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE x (y INTEGER)")
    with pytest.raises(UserError, match="not a results database"):
        load_results(other)
    with pytest.raises(UserError, match="no results for benchmark"):
        load_results(results_db).figures("aime24", ["linear"])
    with pytest.raises(UserError, match="at least one method"):
        load_results(results_db).figures("synthetic", ["slerp"])


def test_explorer_opens_on_few_methods_and_draws_levels(results_db):
    results = load_results(results_db)
    assert results.default_methods("synthetic") == ["linear"]
    levels = results.level_figure("synthetic", "linear")
    assert [trace.name for trace in levels.data] == ["synthetic:L1", "synthetic:L2"]
    assert all(len(trace.x) == 3 for trace in levels.data)  # one point per λ
    with pytest.raises(UserError, match="no slerp results"):
        results.level_figure("synthetic", "slerp")


def test_two_decodings_are_two_curves_never_averaged(tiny_pair, tmp_path):
    """A greedy sweep and a sampled one of the same λs in one DB (as the page's Sweep tab
    with its defaults writes beside the shipped greedy rows): the explorer shows one
    decoding at a time, each curve with one point per λ, each point that decoding's own."""
    db = tmp_path / "two.duckdb"
    sweep(tiny_pair, db, (0.0, 0.5, 1.0))  # greedy, 12 tokens
    spec = SweepSpec(
        direct=str(tiny_pair["direct"]), thinking=str(tiny_pair["thinking"]),
        lams=(0.0, 0.5, 1.0), limit=1, levels=(1, 2),
        decoding={"max_new_tokens": 8, "do_sample": True, "temperature": 1.0},
    )  # fmt: skip
    run_sweep(spec, db, progress=False)
    everything = load_results(db)
    assert everything.decodings == ["greedy, ≤ 12 tokens", "sampled, ≤ 8 tokens"]
    for decoding, budget in (("greedy, ≤ 12 tokens", 12), ("sampled, ≤ 8 tokens", 8)):
        results = everything.only(decoding)
        line = next(
            t for t in results.figures("synthetic", ["linear"])["tokens"].data
            if t.mode == "lines+markers"
        )  # fmt: skip
        assert list(line.x) == [0.0, 0.5, 1.0]  # one point per λ: no zig-zag
        with duckdb.connect(str(db), read_only=True) as con:
            expected = con.execute(
                "SELECT lam, avg(tokens) FROM (SELECT lam, problem_id, avg(n_tokens) AS tokens "
                "FROM samples WHERE max_new_tokens = ? GROUP BY lam, problem_id) "
                "GROUP BY lam ORDER BY lam",
                [budget],
            ).fetchall()
        assert list(line.y) == pytest.approx([tokens for _, tokens in expected])
        assert set(results.table["decoding"]) == {decoding}
    assert everything.only(None).decoding == "greedy, ≤ 12 tokens"  # the most configurations
