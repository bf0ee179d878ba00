"""spectrum.dashboard.votes: preference votes round-trip through a real DuckDB file."""

from __future__ import annotations

import duckdb
import pytest

from spectrum.dashboard.votes import Vote, leaderboard, read_votes, record_vote, tally, wilson
from spectrum.errors import UserError
from spectrum.merge import MergeSpec

ANSWERS = {"direct": "\\boxed{19}", "merged": "<think>x</think>\\boxed{19}", "thinking": "t"}


def make_vote(**overrides) -> Vote:
    spec = dict(method="linear", lam=0.6, params={"scale": 1.0}, layers="0-3", seed=3)
    spec["modules"] = ("attn", "mlp")
    fields = dict(
        choice="merged",
        prompt="12 + 7",
        answers=ANSWERS,
        direct_model="assets/pair/direct",
        thinking_model="assets/pair/thinking",
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        decoding={"temperature": 0.6},
    )
    for key, value in overrides.items():
        (spec if key in spec else fields)[key] = value
    return Vote(**fields, spec=MergeSpec(**spec))


def test_vote_round_trips_with_its_merge_settings(tmp_path):
    db = tmp_path / "votes.duckdb"
    vote_id = record_vote(db, make_vote())
    (row,) = read_votes(db)
    assert row["id"] == vote_id
    assert row["choice"] == "merged"
    assert row["prompt"] == "12 + 7"
    assert (row["direct_answer"], row["merged_answer"], row["thinking_answer"]) == (
        ANSWERS["direct"],
        ANSWERS["merged"],
        ANSWERS["thinking"],
    )
    assert (row["method"], row["lam"], row["layers"], row["seed"]) == ("linear", 0.6, "0-3", 3)
    assert row["modules"] == ["attn", "mlp"]
    assert row["params"] == {"scale": 1.0}
    assert row["history"][1] == {"role": "assistant", "content": "hello"}
    assert row["base_model"] is None
    # The file is an ordinary DuckDB database other tools can read.
    with duckdb.connect(str(db)) as connection:
        assert connection.execute("SELECT count(*) FROM votes").fetchone() == (1,)


def test_tally_counts_choices_per_method_and_lam(tmp_path):
    db = tmp_path / "votes.duckdb"
    for choice, lam in [("merged", 0.6), ("merged", 0.6), ("thinking", 0.6), ("tie", 0.8)]:
        record_vote(db, make_vote(choice=choice, lam=lam))
    counts = tally(db)
    assert counts[("linear", 0.6)]["merged"] == 2
    assert counts[("linear", 0.6)]["thinking"] == 1
    assert counts[("linear", 0.8)]["tie"] == 1
    assert sum(counts[("linear", 0.8)].values()) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"choice": "best"}, "vote choice 'best'"),
        ({"answers": {**ANSWERS, "merged": ""}}, "missing: \\['merged'\\]"),
        ({"prompt": "  "}, "empty prompt"),
    ],
)
def test_bad_votes_are_refused_before_anything_is_written(tmp_path, overrides, message):
    db = tmp_path / "votes.duckdb"
    with pytest.raises(UserError, match=message):
        record_vote(db, make_vote(**overrides))
    assert not db.exists()


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        record_vote(tmp_path / "nowhere" / "votes.duckdb", make_vote())


def test_reading_a_database_without_votes_gives_nothing(tmp_path):
    db = tmp_path / "other.duckdb"
    with duckdb.connect(str(db)) as connection:
        connection.execute("CREATE TABLE samples (x INTEGER)")
    assert read_votes(db) == []
    assert read_votes(tmp_path / "absent.duckdb") == []


def test_wilson_interval_matches_the_textbook_values():
    # Wilson (1927) 95 % intervals, as tabulated (e.g. Newcombe 1998, table I: 0/10, 10/10).
    low, high = wilson(0, 10)
    assert low == 0 and abs(high - 0.2775) < 1e-4
    low, high = wilson(10, 10)
    assert abs(low - 0.7225) < 1e-4 and abs(high - 1) < 1e-12
    low, high = wilson(81, 263)  # Newcombe's example 3: 0.2553 – 0.3662
    assert abs(low - 0.2553) < 1e-4 and abs(high - 0.3662) < 1e-4


def test_leaderboard_from_a_real_db_against_hand_computed_elo(tmp_path):
    db = tmp_path / "votes.duckdb"
    record_vote(db, make_vote(choice="merged", lam=0.5))
    record_vote(db, make_vote(choice="tie", lam=0.5))
    record_vote(db, make_vote(choice="thinking", lam=0.8))
    # By hand: Elo 1000 each; K = 4; E = 1 / (1 + 10^((rb - ra)/400)).
    r = {"direct": 1000.0, "thinking": 1000.0, "linear@0.5": 1000.0, "linear@0.8": 1000.0}

    def play(a, b, score):
        expected = 1 / (1 + 10 ** ((r[b] - r[a]) / 400))
        r[a], r[b] = r[a] + 4 * (score - expected), r[b] - 4 * (score - expected)

    play("linear@0.5", "direct", 1)
    play("linear@0.5", "thinking", 1)
    play("direct", "linear@0.5", 0.5)
    play("direct", "thinking", 0.5)
    play("linear@0.5", "thinking", 0.5)
    play("thinking", "direct", 1)
    play("thinking", "linear@0.8", 1)
    board = {s.model: s for s in leaderboard(db, rounds=50)}
    assert set(board) == set(r)
    for name, rating in r.items():
        assert abs(board[name].elo - rating) < 1e-9
        assert board[name].elo_low <= board[name].elo_high
    assert (board["thinking"].votes, board["thinking"].wins) == (3, 1)
    assert (board["linear@0.5"].votes, board["linear@0.5"].wins) == (2, 1)
    assert (board["linear@0.5"].win_low, board["linear@0.5"].win_high) == wilson(1, 2)
    assert [s.model for s in leaderboard(db)][0] == max(r, key=r.get)
    assert leaderboard(tmp_path / "none.duckdb") == []


def test_a_votes_table_from_before_arena_mode_gains_the_blind_column(tmp_path):
    db = tmp_path / "old.duckdb"
    record_vote(db, make_vote())
    with duckdb.connect(str(db)) as connection:  # as files written before arena mode are
        connection.execute("ALTER TABLE votes DROP COLUMN blind")
    record_vote(db, make_vote(blind=True, choice="thinking"))
    old, new = read_votes(db)
    assert (old["blind"], new["blind"], new["choice"]) == (False, True, "thinking")
