"""Sweeps with every λ in one batch (spectrum model) against the per-λ live re-merge."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest
import torch

from spectrum.eval.sweep import SweepSpec, run_sweep

# What differs between two runs of the same sweep by construction.
VOLATILE = ["run_id", "latency_s", "created_at"]
KEY = ["config_id", "benchmark", "problem_id", "sample_idx"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(pair, **overrides) -> SweepSpec:
    settings = dict(
        direct=str(pair["direct"]),
        thinking=str(pair["thinking"]),
        base=str(pair["base"]),
        methods=("linear", "dare", "slerp"),
        lams=(0.0, 0.3, 0.7, 1.0),
        limit=1,
        levels=(1, 2),
        decoding=dict(max_new_tokens=8, do_sample=False),
        batch_size=2,
    )
    return SweepSpec(**{**settings, **overrides})


def _samples(db) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT * FROM samples").df()
    con.close()
    return rows.drop(columns=VOLATILE).sort_values(KEY).reset_index(drop=True)


def test_greedy_rows_equal_the_per_lam_sweep(tiny_pair, tmp_path):
    spec = _spec(tiny_pair)
    per_lam = run_sweep(spec, tmp_path / "per_lam.duckdb", progress=False, batch_lams=False)
    batched = run_sweep(spec, tmp_path / "batched.duckdb", progress=False)
    assert per_lam.generated == batched.generated == 3 * 4 * 2
    pd.testing.assert_frame_equal(
        _samples(tmp_path / "batched.duckdb"), _samples(tmp_path / "per_lam.duckdb")
    )


def test_batched_sampling_is_reproducible_however_it_is_batched(tiny_pair, tmp_path):
    sampled = dict(methods=("linear",), k=2, decoding=dict(max_new_tokens=8))
    run_sweep(_spec(tiny_pair, **sampled, batch_size=3), tmp_path / "a.duckdb", progress=False)
    # Another batch size, and the grid in two sittings (a resumed sweep): same samples.
    split = tmp_path / "b.duckdb"
    run_sweep(_spec(tiny_pair, **sampled, batch_size=1, lams=(0.3, 1.0)), split, progress=False)
    resumed = run_sweep(_spec(tiny_pair, **sampled, batch_size=1), split, progress=False)
    assert resumed.skipped == 2 * 2 * 2
    first, second = _samples(tmp_path / "a.duckdb"), _samples(split)
    pd.testing.assert_frame_equal(first, second)
    assert first["do_sample"].all() and first["response"].nunique() > 1


def test_cli_flag_defaults_on():
    from spectrum.cli import build_parser

    parser = build_parser({"sweep": "spectrum.commands.sweep"})
    required = ["sweep", "--direct", "D", "--thinking", "T", "--db", "x.duckdb"]
    assert parser.parse_args(required).batch_lams is True
    assert parser.parse_args([*required, "--no-batch-lams"]).batch_lams is False


def test_a_grid_of_the_endpoints_alone_runs_per_lam(tiny_pair, tmp_path, caplog):
    from spectrum.eval.sweep_batched import one_batch_pays

    assert one_batch_pays((0.0, 0.5, 1.0)) and one_batch_pays((0.3, 1.0))
    assert not one_batch_pays((0.0, 1.0)) and not one_batch_pays((1.0,))
    spec = _spec(tiny_pair, methods=("linear",), lams=(0.0, 1.0))
    with caplog.at_level("INFO", logger="spectrum.eval.sweep_batched"):
        chosen = run_sweep(spec, tmp_path / "chosen.duckdb", progress=False)
    assert "holds only the parents" in caplog.text
    per_lam = run_sweep(spec, tmp_path / "per_lam.duckdb", progress=False, batch_lams=False)
    assert chosen.generated == per_lam.generated == 2 * 2
    pd.testing.assert_frame_equal(
        _samples(tmp_path / "chosen.duckdb"), _samples(tmp_path / "per_lam.duckdb")
    )
