"""Sweeps on a tiny pair through the live merger: rows match the configuration, and a
SIGKILLed sweep resumes with every sample exactly once and nothing regenerated."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.eval.benchmarks import load_problems
from spectrum.eval.sweep import SweepProgress, SweepSpec, parse_lams, run_sweep
from spectrum.generate.batch import DecodingSettings, TransformersGenerator
from spectrum.weights.checkpoint import open_checkpoint

KEY = "config_id, benchmark, problem_id, sample_idx"


def test_sweep_rows_match_configuration(tiny_pair, tmp_path):
    torch.set_num_threads(1)
    spec = SweepSpec(
        direct=str(tiny_pair["direct"]),
        thinking=str(tiny_pair["thinking"]),
        methods=("linear", "slerp"),
        lams=(0.0, 0.5, 1.0),
        k=2,
        limit=1,
        levels=(1, 2),
        decoding=dict(max_new_tokens=8),
        batch_size=3,
    )
    db = tmp_path / "results.duckdb"
    first = run_sweep(spec, db, progress=False)
    assert (first.generated, first.skipped) == (2 * 3 * 2 * 2, 0)
    again = run_sweep(spec, db, progress=False)
    assert (again.generated, again.skipped) == (0, 24)

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT * FROM samples").df()
    runs = con.execute("SELECT * FROM runs").df()
    con.close()
    problems = load_problems("synthetic", limit=1, levels=(1, 2))
    expected = {
        (m, lam, p.id, s)
        for m in spec.methods
        for lam in spec.lams
        for p in problems
        for s in (0, 1)
    }
    got = set(rows[["method", "lam", "problem_id", "sample_idx"]].itertuples(index=False))
    assert got == expected and len(rows) == len(expected)
    assert rows["config_id"].nunique() == 6
    assert (rows["benchmark"] == "synthetic").all()
    direct_rows = rows[rows["lam"] == 0.0]
    assert (direct_rows["temperature"] == 0.7).all() and (direct_rows["top_p"] == 0.8).all()
    assert (rows[rows["lam"] > 0]["temperature"] == 0.6).all()
    assert (rows["n_tokens"] <= 8).all()
    assert (rows["finished"] | (rows["n_tokens"] == 8)).all()
    assert (rows["thinks"] == rows["response"].str.contains("</think>", regex=False)).all()
    gold = {p.id: p.answer for p in _toy_problems()}
    assert (rows["gold"] == rows["problem_id"].map(gold)).all()
    assert (rows["correct"] == (rows["extracted"] == rows["gold"])).all()
    assert len(runs) == 1
    assert runs["direct_hash"][0] == open_checkpoint(tiny_pair["direct"]).content_hash()
    assert runs["thinking_hash"][0] == open_checkpoint(tiny_pair["thinking"]).content_hash()


def _toy_problems():
    from spectrum.eval.benchmarks import synthetic as task

    return [p for level in (1, 2) for p in task.make_problems(level, 1, seed=0)]


def test_sweep_at_lam_one_is_the_thinking_model(tiny_pair, tmp_path):
    """Greedy responses of the merged model at λ=1 equal the thinking checkpoint's own."""
    torch.set_num_threads(1)
    spec = SweepSpec(
        direct=str(tiny_pair["direct"]),
        thinking=str(tiny_pair["thinking"]),
        lams=(1.0,),
        limit=2,
        levels=(1,),
        decoding=dict(max_new_tokens=10, do_sample=False),
    )
    db = tmp_path / "results.duckdb"
    run_sweep(spec, db, progress=False)
    con = duckdb.connect(str(db), read_only=True)
    stored = con.execute("SELECT problem_id, response FROM samples ORDER BY problem_id").fetchall()
    con.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_pair["thinking"], dtype=torch.float32)
    generator = TransformersGenerator(
        model.eval(), AutoTokenizer.from_pretrained(tiny_pair["thinking"])
    )
    problems = sorted(load_problems("synthetic", limit=2, levels=(1,)), key=lambda p: p.id)
    settings = DecodingSettings(max_new_tokens=10, do_sample=False)
    own = generator.generate([p.conversation() for p in problems], settings)
    assert stored == [(p.id, g.text) for p, g in zip(problems, own, strict=True)]


def test_progress_reports_and_stop_between_batches_then_resume(tiny_pair, tmp_path):
    """What the dashboard's progress bar and Stop button rely on: a report per stored batch,
    and a stop that keeps every stored batch for the next run to skip."""
    torch.set_num_threads(1)
    spec = SweepSpec(
        direct=str(tiny_pair["direct"]),
        thinking=str(tiny_pair["thinking"]),
        lams=(0.0, 1.0),
        limit=2,
        levels=(1, 2),
        decoding=dict(max_new_tokens=6, do_sample=False),
        batch_size=2,
    )  # 2 λ × 4 problems = 8 samples in batches of 2
    db = tmp_path / "stopped.duckdb"
    reports: list[SweepProgress] = []
    stop = threading.Event()

    def report(progress: SweepProgress) -> None:
        reports.append(progress)
        if progress.done >= 4:
            stop.set()  # as the Stop button does, from another thread, mid-sweep

    # The per-configuration path, as the dashboard's own provider takes (a batched λ grid
    # reports and stops between whole grids).
    first = run_sweep(spec, db, progress=False, report=report, stop=stop, batch_lams=False)
    assert (first.generated, first.skipped, first.stopped) == (4, 0, True)
    assert [r.done for r in reports] == [0, 2, 4]
    assert all(r.total == 8 and r.method == "linear" for r in reports)
    assert reports[0].eta_s is None and reports[-1].eta_s is not None
    assert [r.lam for r in reports] == [0.0, 0.0, 0.0]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 4

    reports.clear()
    again = run_sweep(spec, db, progress=False, report=reports.append, batch_lams=False)
    assert (again.generated, again.skipped, again.stopped) == (4, 4, False)
    assert [(r.done, r.lam) for r in reports] == [(0, 1.0), (2, 1.0), (4, 1.0)]


def test_parse_lams():
    assert parse_lams("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_lams("0.5:0.6:0.01")[-1] == 0.6 and len(parse_lams("0.5:0.6:0.01")) == 11
    assert parse_lams("0,0.3,1") == (0.0, 0.3, 1.0)


def test_kill_and_resume(tiny_pair, tmp_path):
    db = tmp_path / "killed.duckdb"
    command = [
        sys.executable, "-m", "spectrum", "sweep",
        "--direct", str(tiny_pair["direct"]), "--thinking", str(tiny_pair["thinking"]),
        "--methods", "linear", "--lam", "0:1:0.5", "--bench", "synthetic",
        "--limit", "2", "--levels", "1,2", "--k", "2", "--max-new-tokens", "12",
        "--batch-size", "2", "--db", str(db),
    ]  # fmt: skip
    total = 3 * 4 * 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The progress bar on stderr says when samples have been committed: kill after a few.
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        seen += os.read(process.stderr.fileno(), 4096)
        counts = [int(n) for n in re.findall(rb"(\d+)/%d " % total, seen)]
        if counts and max(counts) >= 4:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, seen.decode()[-2000:]

    con = duckdb.connect(str(db), read_only=True)
    before = con.execute(f"SELECT {KEY}, created_at, latency_s, response FROM samples").fetchall()
    con.close()
    assert 0 < len(before) < total, f"kill landed outside the run ({len(before)} rows)"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{total - len(before)} samples generated, {len(before)} already there" in done.stdout

    con = duckdb.connect(str(db), read_only=True)
    after = con.execute(f"SELECT {KEY}, created_at, latency_s, response FROM samples").fetchall()
    keys = con.execute(f"SELECT count(*), count(DISTINCT ({KEY})) FROM samples").fetchone()
    per_config = con.execute(
        "SELECT lam, count(*) FROM samples GROUP BY lam ORDER BY lam"
    ).fetchall()
    n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    con.close()
    assert keys == (total, total)  # no duplicates
    assert per_config == [(lam, 8) for lam in (0.0, 0.5, 1.0)]  # no gaps
    assert set(before) <= set(after)  # committed rows untouched: same time, latency, text
    assert n_runs == 2


@pytest.mark.parametrize("text", ["1:0:0.1", "a,b", "0:1:0"])
def test_parse_lams_rejects(text):
    from spectrum.errors import UserError

    with pytest.raises(UserError, match="λ grid"):
        parse_lams(text)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "nope"], "unknown merge method 'nope'"),
        (["--methods", "ties"], "ties needs a base model"),
        (["--lam", "0,1.5"], "λ=1.5 is outside [0, 1]"),
        (["--param", "slerp.nope=1", "--methods", "slerp"], "has no parameter 'nope'"),
        (["--modules", "heads"], "heads"),
        (["--bench", "aime30"], "unknown benchmark 'aime30'"),
    ],
)
def test_sweep_bad_input_is_one_line_and_writes_nothing(
    tiny_pair, tmp_path, capsys, extra, message
):
    from spectrum.cli import main

    db = tmp_path / "never.duckdb"
    argv = ["sweep", "--direct", str(tiny_pair["direct"]), "--thinking", str(tiny_pair["thinking"])]
    assert main([*argv, "--db", str(db), "--no-progress", *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not db.exists()
