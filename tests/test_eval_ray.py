"""Sweeps on a real local Ray cluster (2 CPU workers) with the embedded pair: the rows equal
the single-process sweep's, a killed worker's cells are re-run elsewhere, and a SIGKILLed
driver resumes from the DB with every unit exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
import ray
import torch

from spectrum.eval.sweep import SweepSpec, run_sweep

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
ROWS = (
    "SELECT config_id, method, lam, benchmark, problem_id, sample_idx, response, n_tokens, "
    "correct FROM samples ORDER BY config_id, benchmark, problem_id, sample_idx"
)
KEY = "config_id, benchmark, problem_id, sample_idx"
# 2 methods × 3 λ × 4 problems, greedy: 24 units in 12 cells of 2.
GREEDY = SweepSpec(
    direct=str(PAIR / "direct"),
    thinking=str(PAIR / "thinking"),
    methods=("linear", "slerp"),
    lams=(0.0, 0.5, 1.0),
    limit=2,
    levels=(1, 2),
    decoding=dict(max_new_tokens=16, do_sample=False),
    batch_size=2,
)
TOTAL = 24


def _rows(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(ROWS).fetchall()
    finally:
        con.close()


def _counts(db: Path) -> tuple[int, int]:
    """(rows, distinct units): equal means nothing twice."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"SELECT count(*), count(DISTINCT ({KEY})) FROM samples").fetchone()
    finally:
        con.close()


def _single_process(spec: SweepSpec, db: Path) -> list[tuple]:
    """The single-process sweep's rows, re-merging per λ as the workers do (its one-batch
    λ decode of affine methods gives the same greedy rows, tests/test_sweep_batched.py)."""
    torch.set_num_threads(1)  # as each Ray worker here: same kernels, same floats
    run_sweep(spec, db, progress=False, batch_lams=False)
    return _rows(db)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[tuple]:
    """The single-process rows of GREEDY."""
    return _single_process(GREEDY, tmp_path_factory.mktemp("single") / "single.duckdb")


def test_driver_killed_then_rerun_resumes(reference, tmp_path):
    """Runs first, before this process starts a Ray of its own: the CLI starts one per run."""
    db = tmp_path / "killed.duckdb"
    command = [
        sys.executable, "-m", "spectrum", "sweep",
        "--direct", GREEDY.direct, "--thinking", GREEDY.thinking,
        "--methods", "linear,slerp", "--lam", "0,0.5,1", "--limit", "2", "--levels", "1,2",
        "--max-new-tokens", "16", "--greedy", "--batch-size", "2", "--db", str(db),
        "--ray", "local", "--workers", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        seen += os.read(process.stderr.fileno(), 4096)
        counts = [int(n) for n in re.findall(rb"(\d+)/%d " % TOTAL, seen)]
        if counts and max(counts) >= 4:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, seen.decode()[-2000:]
    before = _counts(db)
    assert before[0] == before[1] and 0 < before[0] < TOTAL, f"kill outside the run: {before}"

    # One worker this time (one parent load less): the rows do not depend on the workers.
    command[-1] = "1"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    generated = f"{TOTAL - before[0]} samples generated, {before[0]} already there"
    assert generated in done.stdout
    assert _counts(db) == (TOTAL, TOTAL)
    assert _rows(db) == reference


def test_unreachable_address_is_a_user_error():
    from spectrum.errors import UserError
    from spectrum.eval.distributed import RayPool

    with pytest.raises(UserError, match="no Ray cluster answers there"):
        RayPool("127.0.0.1:9")


@pytest.fixture(scope="module")
def pool():
    from spectrum.eval.distributed import RayPool

    pool = RayPool("local", workers=2)
    yield pool
    pool.close()
    ray.shutdown()


def test_ray_rows_equal_single_process(pool, reference, tmp_path):
    assert (pool.workers, pool.threads) == (2, 1)
    result = run_sweep(GREEDY, tmp_path / "ray.duckdb", pool=pool, progress=False)
    assert (result.generated, result.skipped) == (TOTAL, 0)
    assert _rows(tmp_path / "ray.duckdb") == reference


def test_ray_sampled_rows_equal_single_process(pool, tmp_path):
    """Seeds come from the sweep, the configuration and the cell's first unit: sampled
    rows do not depend on which worker drew them."""
    sampled = replace(
        GREEDY, methods=("linear",), lams=(0.5, 1.0), limit=1, k=2, decoding={"max_new_tokens": 16}
    )
    run_sweep(sampled, tmp_path / "ray.duckdb", pool=pool, progress=False)
    rows = _rows(tmp_path / "ray.duckdb")
    assert len(rows) == 2 * 2 * 2  # λ × problems × samples
    assert rows == _single_process(sampled, tmp_path / "single.duckdb")


def test_killed_worker_cells_rerun_elsewhere(pool, reference, tmp_path, monkeypatch):
    run = pool.run

    def run_then_kill(*args):
        for done, item in enumerate(run(*args)):
            if done == 2:  # mid-sweep: the actor has cells in flight
                ray.kill(pool.actors[0])
            yield item

    monkeypatch.setattr(pool, "run", run_then_kill)
    deaths = pool.deaths
    result = run_sweep(GREEDY, tmp_path / "ray.duckdb", pool=pool, progress=False)
    assert pool.deaths == deaths + 1
    assert (result.generated, result.skipped) == (TOTAL, 0)
    assert _counts(tmp_path / "ray.duckdb") == (TOTAL, TOTAL)
    assert _rows(tmp_path / "ray.duckdb") == reference


def test_search_rounds_on_the_pool_find_what_one_process_finds(pool, tmp_path):
    from spectrum.eval.search import find_phase
    from spectrum.eval.sweep import Sweeper

    spec = replace(GREEDY, methods=("linear",), lams=(0.0,), levels=(1, 3), limit=1)

    def search(db: Path, **kwargs):
        sweeper = Sweeper(spec, db, progress=False, batch_lams=False, **kwargs)
        try:
            return find_phase(
                lambda lam: sweeper.point("linear", lam, "synthetic"),
                coarse=0.25,
                resolution=0.0625,
                prefetch=lambda lams: sweeper.run(methods=("linear",), lams=tuple(lams)),
            )
        finally:
            sweeper.close()

    on_pool = search(tmp_path / "ray.duckdb", pool=pool)
    torch.set_num_threads(1)
    alone = search(tmp_path / "single.duckdb")
    assert (on_pool.lam, on_pool.evaluated) == (alone.lam, alone.evaluated)
    assert _rows(tmp_path / "ray.duckdb") == _rows(tmp_path / "single.duckdb")
