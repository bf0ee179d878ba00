"""The app's default results DB is a working copy: votes never write the shipped file."""

import duckdb
from test_app_votes import make_vote

from spectrum.dashboard import service as dashboard
from spectrum.dashboard.votes import read_votes, record_vote


def test_default_db_is_seeded_from_the_shipped_one_and_votes_stay_there(tmp_path, monkeypatch):
    shipped = tmp_path / "assets" / "spectrum.duckdb"
    shipped.parent.mkdir()
    with duckdb.connect(str(shipped)) as con:
        con.execute("CREATE TABLE marker AS SELECT 42 AS answer")
    default = tmp_path / "results" / "spectrum.duckdb"
    monkeypatch.setattr(dashboard, "SHIPPED_DB", shipped)
    monkeypatch.setattr(dashboard, "DEFAULT_DB", default)
    shipped_bytes = shipped.read_bytes()

    db = dashboard.working_db(default)
    assert db == default and default.exists()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT answer FROM marker").fetchone() == (42,)

    record_vote(db, make_vote())
    assert len(read_votes(db)) == 1
    assert shipped.read_bytes() == shipped_bytes
    # A second launch keeps the working copy (and its votes) instead of re-seeding it.
    assert len(read_votes(dashboard.working_db(default))) == 1


def test_an_explicit_db_is_used_as_given(tmp_path):
    explicit = tmp_path / "mine.duckdb"
    assert dashboard.working_db(explicit) == explicit
    assert not explicit.exists()
