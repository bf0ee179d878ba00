"""creative_writing end to end with a real judge: `spectrum serve` on the embedded pair as
the OpenAI-compatible endpoint, a sweep on a tiny pair (API and CLI) storing each row's
judgement, and the report reading them back.

The embedded pair writes gibberish for a rubric and holds 256 positions, so its replies
exercise the recorded-failure paths for real: an unparsable reply (short request) and an
HTTP refusal (the full rubric is longer than its context); the success path of the
parser is tested on fixed replies in test_creative_rubric.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from test_serve import child_env, free_port, serving

from spectrum.errors import UserError
from spectrum.eval.creative import Judge, judge_reply
from spectrum.eval.report import report_statements
from spectrum.eval.style_bleed import style_bleed
from spectrum.eval.sweep import SweepSpec, run_sweep

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assets" / "creative_writing" / "prompts_sample.json"
STARTUP_S = 240
JUDGE_MODEL = "linear@0.5"


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory) -> Iterator[str]:
    """`spectrum serve` on the embedded pair, up and answering /health."""
    folder = tmp_path_factory.mktemp("judge")
    with serving(folder, "--max-new-tokens", "24", startup_s=STARTUP_S) as (_, url):
        yield url


def test_a_real_judge_reply_that_is_not_a_rubric_is_a_recorded_failure(judge_url):
    judge = Judge.parse(f"{judge_url},{JUDGE_MODEL}", max_tokens=16)
    judge.check()
    reply = judge.ask("Score this: The ferry left at dawn.")
    assert isinstance(reply, str)
    judged = judge_reply(reply)
    assert judged.score is None and judged.scores == {}
    assert judged.text == reply and judged.error and "\n" not in judged.error


def test_an_unknown_judge_model_is_a_recorded_http_failure(judge_url):
    judged = Judge.parse(f"{judge_url},no-such-model").judge("Write.", "A piece.")
    assert judged.score is None and judged.text is None
    assert judged.error.startswith("judge call failed: HTTP 4")


def _spec(tiny_pair, judge: str | None, **extra) -> SweepSpec:
    return SweepSpec(
        direct=str(tiny_pair["direct"]), thinking=str(tiny_pair["thinking"]),
        lams=(0.0, 1.0), benchmarks=("creative_writing",), k=2, limit=2,
        data={"creative_writing": str(SAMPLE)}, decoding=dict(max_new_tokens=6),
        judge=judge, judge_max_tokens=8, **extra,
    )  # fmt: skip


def test_sweep_stores_every_rows_judgement_and_style_bleed(tiny_pair, judge_url, tmp_path):
    db = tmp_path / "cw.duckdb"
    done = run_sweep(_spec(tiny_pair, f"{judge_url},{JUDGE_MODEL}"), db, progress=False)
    assert done.generated == 2 * 2 * 2
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT * FROM samples").df()
    assert set(rows["problem_id"]) == {"1#1", "1#2"}
    assert rows["correct"].isna().all() and rows["judge_score"].isna().all()
    # Every row holds why it has no score, from the judge's real answer: the full rubric
    # does not fit the embedded pair's 256 positions, and the server says so.
    assert rows["judge_error"].notna().all() and rows["judge_text"].isna().all()
    assert all(
        e.startswith("judge call failed: HTTP 400") and "context" in e for e in rows["judge_error"]
    )
    assert rows["style_bleed"].tolist() == [style_bleed(t) for t in rows["response"]]
    kinds = {s["kind"] for s in report_statements(db)}
    assert {"judge_score", "style_bleed"} <= kinds and "pass_at_k" not in kinds
    failed = [s for s in report_statements(db) if s["kind"] == "judge_score"]
    assert sorted(s["numbers"]["failed"] for s in failed) == [4, 4]


def test_cli_sweep_with_judge_then_report_json(tiny_pair, judge_url, tmp_path):
    db = tmp_path / "cli.duckdb"
    command = [sys.executable, "-m", "spectrum", "sweep", "--direct", str(tiny_pair["direct"]),
               "--thinking", str(tiny_pair["thinking"]), "--lam", "0.5", "--bench",
               "creative_writing", "--data", f"creative_writing={SAMPLE}", "--limit", "1",
               "--max-new-tokens", "4", "--judge", f"{judge_url},{JUDGE_MODEL}",
               "--judge-max-tokens", "8", "--db", str(db), "--no-progress"]  # fmt: skip
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = subprocess.run(
        [sys.executable, "-m", "spectrum", "report", "--db", str(db), "--json"],
        env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    found = {s["kind"]: s for s in json.loads(report.stdout)}
    assert found["judge_score"]["numbers"]["failed"] == 1
    assert found["style_bleed"]["numbers"]["responses"] == 1


def test_without_judge_or_with_a_dead_one_nothing_is_written(tiny_pair, tmp_path):
    db = tmp_path / "none.duckdb"
    with pytest.raises(UserError, match="scored by a judge model"):
        run_sweep(_spec(tiny_pair, None), db, progress=False)
    with pytest.raises(UserError, match="does not answer") as error:
        run_sweep(_spec(tiny_pair, f"http://127.0.0.1:{free_port()},m"), db, progress=False)
    assert "\n" not in str(error.value)
    assert not db.exists()
