"""Sample inserts into the results DB: one DataFrame per transaction vs row-by-row executemany.

    python bench/store_insert.py [--rows 2000]

Both write the same rows into a fresh ``samples`` table (spectrum.eval.store schema); the
figure is the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from spectrum.eval import store


def sample_rows(n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        dict(
            config_id="c", run_id="r", method="linear", lam=0.5, benchmark="synthetic",
            problem_id=[f"p{offset + i}" for i in range(n)], sample_idx=0,
            response="<think>37 +5=42</think>\\boxed{42}", n_tokens=20, finished=True,
            thinks=True, extracted="42", gold="42", correct=True, latency_s=0.1,
            created_at=datetime(2026, 1, 1),
        )
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    n = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as folder:
        con = store.connect(Path(folder) / "bench.duckdb")
        frame = sample_rows(n)
        started = time.perf_counter()
        store.insert_frame(con, "samples", frame)
        batched = time.perf_counter() - started

        rows = sample_rows(n, offset=n)
        columns = ", ".join(rows.columns)
        marks = ", ".join("?" for _ in rows.columns)
        started = time.perf_counter()
        con.executemany(
            f"INSERT INTO samples ({columns}) VALUES ({marks})",
            rows.itertuples(index=False, name=None),
        )
        row_by_row = time.perf_counter() - started
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 2 * n
        con.close()
    print(f"{n} rows: DataFrame {batched * 1e3:.1f} ms, executemany {row_by_row * 1e3:.1f} ms, "
          f"ratio {row_by_row / batched:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
