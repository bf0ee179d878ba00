"""Two pages on one dashboard: a short chat's time while another page writes a long answer.

Page A asks for a long merged answer; page B, a moment later, a short one. B's time to its
merged answer is measured alone and beside A, for a linear merge (served by the spectrum
model: no lock, each page its own λ) and for slerp (served by the live merger, which
re-merges one shared model, so B waits for A's whole generation). Goal (issue #13): the
spectrum path's ratio ≤ 1.5× on 2 cores.

    python bench/dashboard_concurrency.py [--rounds 3] [--long 400] [--short 24]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from spectrum.dashboard import Dashboard, decoding_for
from spectrum.merge import MergeSpec

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
PROMPT = "37 + 5 - 8 + 4 - 2"
LONG_TOKENS: list[int] = []  # what page A actually wrote


def merged_answer(board: Dashboard, spec: MergeSpec, tokens: int) -> tuple[float, int]:
    """Seconds until the merged column's answer is complete, and its tokens."""
    decoding = {c: decoding_for(c, "greedy", tokens) for c in ("direct", "merged", "thinking")}
    start = time.perf_counter()
    for snapshot in board.chat([], PROMPT, spec, decoding):
        merged = snapshot["merged"]
        if merged is not None and merged.update.finished:
            return time.perf_counter() - start, merged.update.n_tokens
    raise RuntimeError("the merged column never finished")


def merged_answer_s(board: Dashboard, spec: MergeSpec, tokens: int) -> float:
    return merged_answer(board, spec, tokens)[0]


def beside_a_long_answer(board: Dashboard, method: str, long: int, short: int) -> float:
    started = threading.Event()

    def page_a() -> None:
        started.set()
        LONG_TOKENS.append(merged_answer(board, MergeSpec(method, 0.9), long)[1])

    other = threading.Thread(target=page_a)
    other.start()
    started.wait()
    time.sleep(0.3)  # page A is generating
    seconds = merged_answer_s(board, MergeSpec(method, 0.3), short)
    other.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long", type=int, default=400, help="page A's max new tokens")
    parser.add_argument("--short", type=int, default=24, help="page B's max new tokens")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per page, as a 2-core Space gives two pages
    with tempfile.TemporaryDirectory() as folder:
        board = Dashboard(PAIR / "direct", PAIR / "thinking", device="cpu",
                          db=Path(folder) / "votes.duckdb")  # fmt: skip
        print("| method (path) | B alone, s | B beside A, s | ratio | A's tokens |")
        print("|---|---:|---:|---:|---:|")
        for method in ("linear", "slerp"):
            merged_answer_s(board, MergeSpec(method, 0.3), args.short)  # warm (and load)
            alone, beside = [], []
            for _ in range(args.rounds):
                alone.append(merged_answer_s(board, MergeSpec(method, 0.3), args.short))
                beside.append(beside_a_long_answer(board, method, args.long, args.short))
            a, b = statistics.median(alone), statistics.median(beside)
            path = board.served_by(MergeSpec(method, 0.3)).split(" (")[0]
            written = statistics.median(LONG_TOKENS)
            LONG_TOKENS.clear()
            print(f"| {method} ({path}) | {a:.2f} | {b:.2f} | {b / a:.2f}× | {written:.0f} |")


if __name__ == "__main__":
    main()
