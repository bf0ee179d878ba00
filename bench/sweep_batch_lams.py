"""The one-batch λ sweep against the per-λ sweep (``--no-batch-lams``) on the embedded pair.

Both run ``spectrum.eval.sweep.run_sweep`` on the same spec into fresh DuckDB files, in
alternating rounds after one warm-up sweep of each (imports, first loads), so each round
pays what a user's sweep pays: loading its model(s), generating, grading, writing. Reported
per mode: units/s in wall time and per CPU-second of this process (steadier on a shared
machine), best and median round, and batched ÷ per-λ from the same run. Usage:

    python bench/sweep_batch_lams.py [--k 2] [--limit 2] [--max-new-tokens 32] [--greedy]
                                     [--rounds 3] [--lams 0:1:0.1] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spectrum.eval.sweep import SweepSpec, parse_lams, run_sweep

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"


def one(spec: SweepSpec, folder: str, batch_lams: bool) -> tuple[float, float]:
    """(units per wall second, units per CPU second) of one fresh sweep."""
    db = Path(folder) / f"{batch_lams}-{time.monotonic_ns()}.duckdb"
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_sweep(spec, db, progress=False, batch_lams=batch_lams)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result.generated / wall, result.generated / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lams", default="0:1:0.1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoding = {"max_new_tokens": args.max_new_tokens}
    if args.greedy:
        decoding["do_sample"] = False
    spec = SweepSpec(
        direct=str(PAIR / "direct"),
        thinking=str(PAIR / "thinking"),
        lams=parse_lams(args.lams),
        k=args.k,
        limit=args.limit,
        decoding=decoding,
        batch_size=args.batch_size,
    )
    rates: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        for batch_lams in (True, False):
            one(spec, folder, batch_lams)  # warm-up: imports and first loads
        for _ in range(args.rounds):
            for batch_lams in (True, False):
                rates[batch_lams].append(one(spec, folder, batch_lams))
    print(f"load average {os.getloadavg()[0]:.1f}; {len(spec.lams)} λ, k={args.k}, "
          f"limit={args.limit}, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"{'greedy' if args.greedy else 'sampled'}")  # fmt: skip
    print("| mode | units/s wall (best) | (median) | units/CPU-s (best) | (median) |")
    print("|---|---:|---:|---:|---:|")
    for batch_lams, name in ((True, "one batch"), (False, "per λ")):
        wall = [w for w, _ in rates[batch_lams]]
        cpu = [c for _, c in rates[batch_lams]]
        print(f"| {name} | {max(wall):.1f} | {statistics.median(wall):.1f} "
              f"| {max(cpu):.1f} | {statistics.median(cpu):.1f} |")  # fmt: skip
    for index, label in ((0, "wall"), (1, "CPU")):
        ratio = max(r[index] for r in rates[True]) / max(r[index] for r in rates[False])
        print(f"one batch ÷ per λ, best {label}: {ratio:.2f}×")


if __name__ == "__main__":
    main()
