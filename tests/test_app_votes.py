"""spectrum.dashboard.votes: preference votes round-trip through a real DuckDB file."""

from __future__ import annotations

import duckdb
import pytest

from spectrum.dashboard.votes import Vote, read_votes, record_vote, tally
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
