"""`spectrum sweep --backend vllm` from the project venv, which has no vLLM: the engine runs
in a worker under the vLLM venv (``spectrum.live.vllm_process``), and its greedy rows are
the transformers backend's, row for row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from test_live_vllm import ROOT, save_pair, vllm_python

from spectrum.errors import UserError

# float32 (vLLM would take bfloat16) so the two backends decode the same tokens.
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}


def sweep(pair: dict[str, Path], db: Path, backend: str, env: dict) -> str:
    command = [
        sys.executable, "-m", "spectrum", "sweep", "--backend", backend,
        "--direct", str(pair["direct"]), "--thinking", str(pair["thinking"]),
        "--db", str(db), "--lam", "0,0.5,1", "--levels", "1", "--limit", "2",
        "--greedy", "--max-new-tokens", "8", "--batch-size", "4", "--no-progress",
        "--no-batch-lams",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout


def rows(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT lam, problem_id, sample_idx, response, n_tokens, finished FROM samples "
            "ORDER BY lam, problem_id, sample_idx"
        ).fetchall()


def test_vllm_sweep_from_the_cli(tmp_path):
    pair = save_pair(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SPECTRUM_VLLM_PYTHON": vllm_python(),
        "SPECTRUM_VLLM_ENGINE_ARGS": json.dumps(ENGINE),
    }
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the project's own bound applies
    out = sweep(pair, tmp_path / "vllm.duckdb", "vllm", env)
    assert "6 samples generated, 0 already there" in out
    fast = rows(tmp_path / "vllm.duckdb")
    assert {row[0] for row in fast} == {0.0, 0.5, 1.0}
    assert all(0 < n_tokens <= 8 for *_, n_tokens, _ in fast)
    by_lam = {lam: [row[3] for row in fast if row[0] == lam] for lam in (0.0, 1.0)}
    assert by_lam[0.0] != by_lam[1.0]  # λ reached the worker's weights
    # Resumed: everything is there, so no engine starts.
    again = sweep(pair, tmp_path / "vllm.duckdb", "vllm", env)
    assert "0 samples generated, 6 already there" in again
    sweep(pair, tmp_path / "hf.duckdb", "transformers", env)
    assert fast == rows(tmp_path / "hf.duckdb")


def test_bad_engine_args_are_one_line(monkeypatch):
    from spectrum.live.vllm_process import engine_args

    monkeypatch.setenv("SPECTRUM_VLLM_ENGINE_ARGS", "{max_model_len: 4}")
    with pytest.raises(UserError, match="SPECTRUM_VLLM_ENGINE_ARGS is not JSON"):
        engine_args()
    monkeypatch.setenv("SPECTRUM_VLLM_ENGINE_ARGS", "[1]")
    with pytest.raises(UserError, match="JSON object"):
        engine_args()


def test_kv_cache_is_bounded_by_default(monkeypatch):
    from spectrum.live.vllm import kv_cache_kwargs

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("SPECTRUM_VLLM_KV_GIB", raising=False)
    assert kv_cache_kwargs({"dtype": "float32"}) == {
        "dtype": "float32",
        "kv_cache_memory_bytes": 2**30,
    }
    monkeypatch.setenv("SPECTRUM_VLLM_KV_GIB", "2.5")
    assert kv_cache_kwargs({})["kv_cache_memory_bytes"] == int(2.5 * 2**30)
    # The caller's own bound wins, on a GPU (utilization) or anywhere (bytes).
    assert kv_cache_kwargs({"gpu_memory_utilization": 0.6}) == {"gpu_memory_utilization": 0.6}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert kv_cache_kwargs({}) == {}
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    for bad in ("0", "-1", "lots"):
        monkeypatch.setenv("SPECTRUM_VLLM_KV_GIB", bad)
        with pytest.raises(UserError, match="SPECTRUM_VLLM_KV_GIB"):
            kv_cache_kwargs({})
