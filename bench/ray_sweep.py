"""Sweep throughput on a local Ray pool vs one process, and the driver's write rate.

    python bench/ray_sweep.py [--limit 2] [--k 8] [--max-new-tokens 32] [--batch-size 16]

The embedded pair, linear and slerp × λ 0:1:0.25 × the synthetic task's 5 levels, sampled
decoding: 800 units in cells of 16. Each mode runs the same sweep into a fresh DB, with one
torch thread per generating process: ``single`` (no Ray: this process generates and
writes), ``ray-1`` and ``ray-2`` (a local Ray pool of 1 or 2 actors; this process only
writes). Loading the parents is timed apart from the sweep (once per worker); units/s is
the sweep alone. Modes alternate for ``--repeats`` rounds so a change in the machine's load
hits them alike; the best round of each is reported beside the median. On a shared
machine wall-clock rates depend on the neighbours, so the CPU seconds the generating
processes use are reported too (units per CPU-second: the rate with a core each). The
driver's write rate is real rows re-inserted 16 a transaction, as they are and with
responses padded to 40k characters (≈ 10k tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd
import ray
import torch

from spectrum.eval import store
from spectrum.eval.distributed import RayPool
from spectrum.eval.sweep import SweepSpec, default_provider, run_sweep

CELLS_WRITTEN = 64
PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"


def sweep_spec(args: argparse.Namespace) -> SweepSpec:
    return SweepSpec(
        direct=str(PAIR / "direct"),
        thinking=str(PAIR / "thinking"),
        methods=("linear", "slerp"),
        lams=(0.0, 0.25, 0.5, 0.75, 1.0),
        limit=args.limit,
        k=args.k,
        decoding={"max_new_tokens": args.max_new_tokens},
        batch_size=args.batch_size,
    )


def timed_sweep(spec: SweepSpec, db: Path, **kwargs) -> dict:
    """Wall seconds, units, and this process's CPU seconds (generation here, or writes only)."""
    started, cpu = time.perf_counter(), time.process_time()
    result = run_sweep(spec, db, progress=False, **kwargs)
    return dict(
        sweep_s=time.perf_counter() - started,
        units=result.generated,
        driver_cpu_s=time.process_time() - cpu,
    )


def worker_cpu(pool: RayPool) -> float:
    """CPU seconds the pool's actors have used: what they would take on dedicated cores."""
    return sum(
        ray.get([a.__ray_call__.remote(lambda self: time.process_time()) for a in pool.actors])
    )


def single(spec: SweepSpec, db: Path) -> dict:
    torch.set_num_threads(1)
    started = time.perf_counter()
    provider = default_provider(spec)
    load = time.perf_counter() - started
    return dict(load_s=load, **timed_sweep(spec, db, provider_factory=lambda _: provider))


def on_ray(spec: SweepSpec, db: Path, workers: int) -> dict:
    pool = RayPool("local", workers=workers, threads=1)
    try:
        started = time.perf_counter()
        pool.start(spec)
        load = time.perf_counter() - started
        cpu = worker_cpu(pool)
        measured = timed_sweep(spec, db, pool=pool)
        measured["worker_cpu_s"] = worker_cpu(pool) - cpu
    finally:
        pool.close()
    return dict(load_s=load, **measured)


def write_rate(db: Path, batch_size: int, response_chars: int = 0) -> dict:
    """Cells per second the driver commits: the sweep's real rows, one cell a transaction;
    with ``response_chars``, each response padded to that length (a long reasoning trace)."""
    rows = duckdb.connect(str(db), read_only=True).execute("SELECT * FROM samples").df()
    copies = -(-CELLS_WRITTEN * batch_size // len(rows))  # enough rows for CELLS_WRITTEN cells
    rows = pd.concat([rows.assign(sample_idx=rows["sample_idx"] + 1000 * i) for i in range(copies)])
    rows = rows.iloc[: CELLS_WRITTEN * batch_size]
    if response_chars:
        rows["response"] = rows["response"].str.pad(response_chars, side="right", fillchar="x")
    with tempfile.TemporaryDirectory() as folder:
        con = store.connect(Path(folder) / "write.duckdb")
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            store.insert_frame(con, "samples", rows.iloc[start : start + batch_size])
        seconds = time.perf_counter() - started
        con.close()
    cells = -(-len(rows) // batch_size)
    return dict(cells_per_s=cells / seconds, units_per_s=len(rows) / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2, help="problems per synthetic level")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec = sweep_spec(args)
    runs: dict[str, list[dict]] = {"single": [], "ray-1": [], "ray-2": []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for mode in runs:
                db = Path(folder) / f"{mode}-{repeat}.duckdb"
                if mode == "single":
                    runs[mode].append(single(spec, db))
                else:
                    runs[mode].append(on_ray(spec, db, int(mode[-1])))
                loads.append(os.getloadavg()[0])
                print(mode, json.dumps(runs[mode][-1]), f"load {loads[-1]:.1f}", flush=True)
        first = Path(folder) / "single-0.duckdb"
        writes = {
            "real rows": write_rate(first, 16),
            "40k-char responses": write_rate(first, 16, response_chars=40_000),
        }
    rate = {m: [r["units"] / r["sweep_s"] for r in rs] for m, rs in runs.items()}
    summary = {
        m: dict(
            units=rs[0]["units"],
            units_per_s_best=max(rate[m]),
            units_per_s_median=statistics.median(rate[m]),
            load_s_median=statistics.median(r["load_s"] for r in rs),
            # units per CPU-second of generating process(es): the rate on dedicated cores
            units_per_cpu_s=max(r["units"] / r.get("worker_cpu_s", r["driver_cpu_s"]) for r in rs),
            driver_cpu_s_per_unit=min(r["driver_cpu_s"] / r["units"] for r in rs),
        )
        for m, rs in runs.items()
    }
    best = {m: s["units_per_s_best"] for m, s in summary.items()}
    print(json.dumps(dict(summary=summary, driver_writes=writes), indent=1))
    print(
        f"scaling 1→2 workers: {best['ray-2'] / best['ray-1']:.2f}x; "
        f"Ray overhead at 1 worker: {1 - best['ray-1'] / best['single']:.1%}; "
        f"load average during the run: {min(loads):.1f}–{max(loads):.1f}"
    )


if __name__ == "__main__":
    main()
