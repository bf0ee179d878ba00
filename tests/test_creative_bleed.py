"""Style bleed: the signs on hand-written responses, the additive column filled for a real
older DB (the shipped one) on write-open (idempotent, also by two processes at once, also
beside a column another change added), and its rate vs λ as a figure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from spectrum.eval import figures, store
from spectrum.eval.results import confirmation_ids
from spectrum.eval.results_rows import bleed_summaries
from spectrum.eval.style_bleed import signs, style_bleed

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "assets" / "spectrum.duckdb"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>reasoning</think>The answer is \\boxed{4}.", ()),
        ("reasoning</think>\n\nThe answer is \\boxed{4}.", ()),  # template opened <think>
        ("A plain direct answer: \\boxed{4}", ()),
        ("", ()),
        ("<think>a</think>b<think>c</think>d", ("stray_tag",)),
        ("a</think>b</think>c", ("stray_tag", "unbalanced_tags")),
        ("<think>a <think> b</think>c", ("stray_tag", "unbalanced_tags")),
        ("Answer first. <think>", ("stray_tag", "unbalanced_tags")),
        ("<think>thinking that never ends", ("unbalanced_tags",)),
        ("x</think>The story.\nWait, let me check the ending.", ("reasoning_in_answer",)),
        ("Okay, so the user wants a poem.\nRoses...", ("reasoning_in_answer",)),
        ("Hmm, maybe three.\n\\boxed{3}", ("reasoning_in_answer",)),
        ("x</think>\\boxed{1} or \\boxed{2}", ("multiple_boxed",)),
        ("\\boxed{1}</think>\\boxed{2}", ()),  # one box in the answer, one in the block
        ("Okay, so</think>fine", ()),  # reasoning phrases inside the block are its own
        (
            "a</think>Hmm.\n<think>\\boxed{1}\\boxed{2}",
            (
                "stray_tag",
                "unbalanced_tags",
                "reasoning_in_answer",
                "multiple_boxed",
            ),
        ),  # fmt: skip
    ],
)
def test_signs(text, expected):
    assert signs(text) == expected
    assert style_bleed(text) == len(expected)


def test_missing_text_scores_zero():
    assert style_bleed(None) == 0 and style_bleed(float("nan")) == 0


def _old_copy(tmp_path: Path) -> Path:
    db = tmp_path / "old.duckdb"
    shutil.copy(SHIPPED, db)
    # A file from before the column: the shipped one less what the style-bleed change added.
    with duckdb.connect(str(db)) as con:
        columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
        for column in ("style_bleed", "judge_score", "judge_scores", "judge_text", "judge_error"):
            if column in columns:
                con.execute(f"ALTER TABLE samples DROP COLUMN {column}")
    return db


def _bleed_by_row(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT config_id, problem_id, sample_idx, response, style_bleed FROM samples"
        ).fetchall()
    return {row[:3]: (row[3], row[4]) for row in rows}


def test_older_file_is_filled_once_from_its_responses(tmp_path):
    db = _old_copy(tmp_path)
    with store.opened(db, read_only=True) as con:
        before = bleed_summaries(con)  # read-only: computed from the responses
    with duckdb.connect(str(db)) as con:  # another change's column, added first
        con.execute("ALTER TABLE samples ADD COLUMN other_helper_column INTEGER")
    with store.opened(db) as con:  # the write-open fills every row
        assert (
            con.execute("SELECT count(*) FROM samples WHERE style_bleed IS NULL").fetchone()[0] == 0
        )
        assert store.fill_style_bleed(con) == 0  # idempotent
        after = bleed_summaries(con)
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    rows = _bleed_by_row(db)
    with duckdb.connect(str(SHIPPED), read_only=True) as con:
        assert len(rows) == con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert all(stored == style_bleed(text) for text, stored in rows.values())
    assert before.drop(columns="module_lams").equals(after.drop(columns="module_lams"))
    assert version[0] == str(store.SCHEMA_VERSION)
    # A row an older tool writes later (no score) is filled at the next write-open.
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE samples SET style_bleed = NULL, response = 'x</think>y</think>' "
            "WHERE sample_idx = 0 AND problem_id = (SELECT min(problem_id) FROM samples)"
        )
        changed = con.execute("SELECT count(*) FROM samples WHERE style_bleed IS NULL").fetchone()
    with store.opened(db) as con:
        pass
    rows = _bleed_by_row(db)
    assert changed[0] >= 1
    assert (
        sum(stored == 2 and text == "x</think>y</think>" for text, stored in rows.values())
        == (changed[0])
    )


def test_two_processes_opening_an_older_file_at_once(tmp_path):
    db = _old_copy(tmp_path)
    code = (
        "import sys; from spectrum.eval import store\n"
        "with store.opened(sys.argv[1]) as con:\n"
        "    print(con.execute('SELECT count(*) FROM samples WHERE style_bleed IS NULL')"
        ".fetchone()[0])\n"
    )
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    both = [
        subprocess.Popen([sys.executable, "-c", code, str(db)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["0", "0"]
    assert all(stored == style_bleed(text) for text, stored in _bleed_by_row(db).values())


def test_style_bleed_vs_lam_figure(tmp_path):
    db = _old_copy(tmp_path)
    with store.opened(db) as con:
        bleed = bleed_summaries(con)
        # The sweep's merges and parents: not baselines, checkpoints (levels, not curves) or
        # confirmations (their own statements).
        raw = con.execute(
            "SELECT method, lam, avg((style_bleed > 0)::INTEGER) AS rate FROM samples "
            "WHERE module_lams IS NULL "
            "AND method NOT IN ('budget_forcing', 'no_thinking', 'checkpoint') "
            "AND NOT list_contains(?, config_id) GROUP BY method, lam",
            [confirmation_ids(con)],
        ).df()
    figure = figures.style_bleed_vs_lam(bleed, "synthetic")
    lines = {trace.name: trace for trace in figure.data if trace.mode == "lines+markers"}
    assert set(lines) == set(raw["method"])
    for method, trace in lines.items():
        expected = raw[raw["method"] == method].sort_values("lam")
        assert list(trace.x) == pytest.approx(list(expected["lam"]))
        assert list(trace.y) == pytest.approx(list(expected["rate"]))
    assert "style bleed" in figure.layout.yaxis.title.text


def test_explorer_draws_style_bleed_for_the_methods_shown(tmp_path):
    from spectrum.dashboard.explorer import load_results

    db = _old_copy(tmp_path)
    results = load_results(db)
    methods = results.default_methods("synthetic")
    plots = results.figures("synthetic", methods)
    drawn = {trace.name for trace in plots["bleed"].data if trace.mode == "lines+markers"}
    assert drawn == set(methods)
