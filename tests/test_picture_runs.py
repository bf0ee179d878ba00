"""Runs kept apart: a page sweep is its own run, the explorer filters by run within one
decoding (never pooling runs it was not asked to), and the shipped results DB stays
byte-identical through page sweeps, votes and explorer reads. On the embedded pair, with a
real Dashboard and real DuckDB files."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import duckdb
import pandas as pd
import pytest
import torch

from spectrum.dashboard import ALL_RUNS, sample_cards, service
from spectrum.dashboard.explorer import sample_responses
from spectrum.dashboard.service import DEFAULT_PAIR, SHIPPED_DB, Dashboard, Turn, decoding_for
from spectrum.dashboard.votes import read_votes
from spectrum.errors import UserError
from spectrum.eval import store
from spectrum.merge import MergeSpec

GREEDY = {column: decoding_for(column, "greedy", 40) for column in ("direct", "merged", "thinking")}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shipped_before() -> str:
    return digest(SHIPPED_DB)


@pytest.fixture(scope="module")
def board(tmp_path_factory, shipped_before):
    """The app's own default: a working copy seeded from the shipped DB."""
    torch.set_num_threads(1)
    default = tmp_path_factory.mktemp("picture_runs") / "results" / "spectrum.duckdb"
    patch = pytest.MonkeyPatch()
    patch.setattr(service, "DEFAULT_DB", default)
    try:
        yield Dashboard(
            DEFAULT_PAIR / "direct", DEFAULT_PAIR / "thinking", device="cpu", db=default
        )
    finally:
        patch.undo()


def per_run_accuracy(db, run_id: str) -> dict[float, tuple[int, float]]:
    """λ → (problems, Mean@k) of one run's own rows, straight from SQL."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT lam, count(*), avg(acc) FROM (SELECT lam, problem_id, "
            "avg(correct::INTEGER) AS acc FROM samples WHERE run_id = ? AND method = 'linear' "
            "GROUP BY lam, problem_id) GROUP BY lam ORDER BY lam",
            [run_id],
        ).fetchall()
    return {lam: (n, acc) for lam, n, acc in rows}


def test_page_sweeps_are_their_own_runs_and_the_explorer_filters_by_run(board):
    db = str(board.db)
    assert board.db != SHIPPED_DB.resolve() and board.db.is_file()
    first = board.sweep(db, ["linear"], "0,1", "synthetic", limit=1, max_new_tokens=48)
    # The same grid on more problems: only the new problems are generated, as a new run.
    second = board.sweep(db, ["linear"], "0,1", "synthetic", limit=2, max_new_tokens=48)
    assert first.run_id != second.run_id
    assert (first.generated, second.generated, second.skipped) == (10, 10, 10)
    with duckdb.connect(db, read_only=True) as con:
        recorded = dict(
            con.execute(
                "SELECT run_id, command FROM runs WHERE run_id IN (?, ?)",
                [first.run_id, second.run_id],
            ).fetchall()
        )
        counts = dict(
            con.execute(
                "SELECT run_id, count(*) FROM samples WHERE run_id IN (?, ?) GROUP BY run_id",
                [first.run_id, second.run_id],
            ).fetchall()
        )
        decoding = con.execute(
            "SELECT DISTINCT do_sample, max_new_tokens FROM samples WHERE run_id = ?",
            [first.run_id],
        ).fetchall()
    assert recorded == {r: "spectrum app (sweep tab)" for r in (first.run_id, second.run_id)}
    assert counts == {first.run_id: 10, second.run_id: 10}

    everything = board.results(db)
    label = f"{'sampled' if decoding[0][0] else 'greedy'}, ≤ 48 tokens"
    assert label in everything.decodings and "greedy, ≤ 160 tokens" in everything.decodings
    choices = everything.run_choices(label)
    assert choices[0] == ("all 2 runs of this decoding", ALL_RUNS)
    assert [value for _, value in choices[1:]] == [second.run_id, first.run_id]  # newest first
    assert all("page sweep" in text for text, _ in choices[1:])
    # The shipped runs are listed under their own decoding, never under the page's.
    with duckdb.connect(str(service.SHIPPED_DB), read_only=True) as con:
        (shipped_runs,) = con.execute(
            "SELECT count(DISTINCT run_id) FROM samples "
            "WHERE NOT do_sample AND max_new_tokens = 160"
        ).fetchone()
    assert len(everything.run_choices("greedy, ≤ 160 tokens")) == 1 + shipped_runs

    pooled = everything.only(label).table
    # Two pages asking for different runs at once each get their own run's points.
    with ThreadPoolExecutor(4) as pool:
        tables = list(
            pool.map(lambda r: board.results(db, r.run_id).only(label).table, [first, second] * 2)
        )
    for run, alone in zip([first, second] * 2, tables, strict=True):
        expected = per_run_accuracy(board.db, run.run_id)
        assert sorted(alone["lam"]) == sorted(expected)
        for _, row in alone.iterrows():
            assert (row["n_problems"], row["mean"]) == pytest.approx(expected[row["lam"]])
    # All runs of one decoding: the same configuration over both runs' problems.
    assert sorted(pooled["n_problems"]) == [10, 10]
    # The style-bleed plot draws that decoding's configurations alone, not the shipped
    # greedy ones beside them.
    bleed = everything.only(label).figures("synthetic", ["linear"])["bleed"]
    drawn = [x for trace in bleed.data if trace.mode == "lines+markers" for x in trace.x]
    assert sorted(drawn) == sorted(pooled.loc[pooled["method"] == "linear", "lam"])
    # The samples shown are the run's own, with the question and the rendered answer.
    frame = board.samples(db, "synthetic", "linear", 1.0, decoding=label, run=first.run_id)
    assert len(frame) == 5
    with duckdb.connect(db, read_only=True) as con:
        owned = con.execute(
            "SELECT problem_id FROM samples WHERE run_id = ? AND lam = 1 ORDER BY problem_id",
            [first.run_id],
        ).fetchall()
    assert sorted(frame["problem_id"]) == [p for (p,) in owned]
    cards = sample_cards(frame)
    assert frame["prompt"].iloc[0].split("\n")[0] in cards
    assert "<think>" not in cards and "$\\boxed{" in cards
    with pytest.raises(UserError, match="no samples of run"):
        board.results(db, "not-a-run")


def test_shipped_results_stay_byte_identical(board, shipped_before):
    """A page sweep, a vote and explorer reads of the shipped file itself leave it as it
    was; a sweep aimed at it is refused before any work."""
    board.sweep(str(board.db), ["linear"], "0.5", "synthetic", limit=1, max_new_tokens=32)
    turn = list(board.chat([], "96 - 2", MergeSpec("linear", 0.5), GREEDY))[-1]
    board.vote([Turn("96 - 2", turn)], "merged", GREEDY)
    assert len(read_votes(board.db)) == 1
    shipped = str(SHIPPED_DB)
    board.results(shipped).only(None).findings("synthetic")
    board.samples(shipped, "synthetic", "linear", 0.5, decoding="greedy, ≤ 160 tokens")
    board.leaderboard(shipped)
    with pytest.raises(UserError, match="shipped assets folder"):
        board.sweep(shipped, ["linear"], "0.5", "synthetic", limit=1, max_new_tokens=32)
    assert digest(SHIPPED_DB) == shipped_before
    assert not SHIPPED_DB.with_name(SHIPPED_DB.name + ".wal").exists()


def test_samples_show_the_question_and_the_answer_as_text_never_as_markup(tmp_path):
    """Stored text is shown, never run: tags in a prompt or a response are escaped; the
    thinking is folded and the boxed answer becomes math."""
    db = tmp_path / "stored.duckdb"
    row = dict(
        config_id="c", run_id="r", method="linear", lam=1.0, benchmark="synthetic", level=2,
        problem_id="L2-x", sample_idx=0, prompt="What is 1+2? <img src=x onerror=alert(1)>",
        response="<think>a < b, so <b>3</b></think>\\boxed{3}", n_tokens=9, finished=True,
        thinks=True, extracted="3", gold="3", correct=True, created_at=datetime(2026, 1, 1),
    )  # fmt: skip
    with store.opened(db) as con:
        store.insert_frame(con, "samples", pd.DataFrame([row]))
    cards = sample_cards(sample_responses(db, "synthetic", "linear", 1.0))
    assert "&lt;img src=x" in cards and "<img" not in cards and "<b>" not in cards
    assert "<details><summary>Thinking (5 words)</summary>" in cards and "a &lt; b" in cards
    assert cards.count("$\\boxed{3}$") == 1 and "<think>" not in cards
    assert "Level 2 · Question" in cards and "✓ correct (gold 3) · 9 tokens" in cards
