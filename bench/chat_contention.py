"""One visitor's long request against another's short chat, on one dashboard.

A background page sends the largest prompt the model allows (prompt tokens + max new tokens
= the context) over and over; meanwhile a second page sends a small chat and we time it
from click to last token, against the same small chat on an idle dashboard. Ratios of
medians (loaded ÷ idle: 1 = no stall) for a background page at the same merge as the small
one (their merged columns share the live model) and at another λ (its merged column waits
for the background's merged answer: the live model holds one merge at a time). Also: how
long an oversize prompt (100k characters) takes to be refused while the background runs.

    python bench/chat_contention.py [--repeats 5] [--write]   # --write: into RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from spectrum.dashboard import DEFAULT_PAIR, Dashboard, MergeSpec, decoding_for
from spectrum.errors import UserError

SMALL = "37 + 5 - 8"
SMALL_TOKENS = 32
BIG_TOKENS = 64
SECTION = "## Chat under load (`bench/chat_contention.py`)"


def settings(tokens: int) -> dict:
    return {c: decoding_for(c, "greedy", tokens) for c in ("direct", "merged", "thinking")}


def largest_prompt(board: Dashboard) -> str:
    """A prompt whose tokens plus BIG_TOKENS fill the context exactly (one char, one token)."""
    context = board.context_length
    empty = [{"role": "user", "content": ""}]
    overhead = board.check_request(empty, "direct", settings(BIG_TOKENS)["direct"])
    prompt = "7" * (context - BIG_TOKENS - overhead)
    tokens = board.check_request([{"role": "user", "content": prompt}], "direct",
                                 settings(BIG_TOKENS)["direct"])  # fmt: skip
    assert tokens + BIG_TOKENS == context, (tokens, context)
    return prompt


def small_chat(board: Dashboard, lam: float) -> float:
    start = time.perf_counter()
    for _ in board.chat([], SMALL, MergeSpec("linear", lam), settings(SMALL_TOKENS)):
        pass
    return time.perf_counter() - start


def refusal(board: Dashboard) -> float:
    start = time.perf_counter()
    try:
        next(board.chat([], "7" * 100_000, MergeSpec("linear", 0.5), settings(SMALL_TOKENS)))
    except UserError:
        return time.perf_counter() - start
    raise AssertionError("a 100k-character prompt was accepted")


class Background:
    """Another page sending the largest allowed prompt again and again, at ``lam``."""

    def __init__(self, board: Dashboard, lam: float) -> None:
        self.board, self.lam, self.prompt = board, lam, largest_prompt(board)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        spec = MergeSpec("linear", self.lam)
        while not self.stop.is_set():
            for _ in self.board.chat([], self.prompt, spec, settings(BIG_TOKENS)):
                pass

    def __enter__(self) -> Background:
        self.thread.start()
        time.sleep(0.5)  # the background page is mid-answer
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def round_trip(board: Dashboard) -> dict[str, float]:
    """One paired round: idle, then under each background (machine load drifts slowly)."""
    times = {"idle": small_chat(board, 0.5)}
    for name, lam in (("same", 0.5), ("other", 0.9)):
        with Background(board, lam):
            times[name] = small_chat(board, 0.5)
            times[f"{name} refusal"] = refusal(board)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        board = Dashboard(DEFAULT_PAIR / "direct", DEFAULT_PAIR / "thinking", device="cpu",
                          db=Path(folder) / "bench.duckdb")  # fmt: skip
        small_chat(board, 0.5)  # warm-up
        rounds = [round_trip(board) for _ in range(args.repeats)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(key: str) -> float:  # of each round's own idle time, then the median
        return statistics.median(r[key] / r["idle"] for r in rounds)

    rows = [("idle dashboard", median("idle"), 1.0, "–")]
    for key, where in (("same", "the same λ"), ("other", "another λ")):
        refused = f"{median(key + ' refusal') * 1e3:.1f} ms"
        rows.append((f"another page at {where} streams the largest prompt", median(key),
                     ratio(key), refused))  # fmt: skip
    context = board.context_length
    table = [
        SECTION,
        "",
        f"Embedded pair ({context} positions), CPU, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats} paired rounds (÷ idle: each round's own idle time). "
        f"Small chat: three columns, greedy, {SMALL_TOKENS} new "
        f"tokens each, click to last token. Background: prompt of {context - BIG_TOKENS} "
        f"tokens + {BIG_TOKENS} new = the whole context, sent again as soon as answered.",
        "",
        "| while | small chat (s) | ÷ idle | 100k-char prompt refused in |",
        "|---|---|---|---|",
        *(
            f"| {name} | {seconds:.2f} | {ratio:.2f} | {refused} |"
            for name, seconds, ratio, refused in rows
        ),  # fmt: skip
        "",
        "Same λ: the merged columns share the live model (sessions are shared, `set()` waits",
        "for all), so the small chat only competes for CPU. Another λ: the small page's merged",
        "column waits for the background's merged answer to end before re-merging (one merge",
        "is loaded at a time; a batched spectrum model will lift that). The parent columns never",
        "wait, and the context check runs before any lock.",
        "",
    ]
    text = "\n".join(table)
    print(text)
    if args.write:
        write_section(Path(__file__).with_name("RESULTS.md"), text)


def write_section(results: Path, text: str) -> None:
    """Replace (or append) this script's section, leaving the others as they are."""
    current = results.read_text()
    if SECTION in current:
        before, after = current.split(SECTION, 1)
        rest = after.split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) > 1 else ""
        current = before + text.rstrip("\n") + "\n" + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text
    results.write_text(current)


if __name__ == "__main__":
    main()
