"""Hostile input to the dashboard (issue #10), on a real tiny pair and real processes:
Overwrite never deletes what the project did not make, requests are bounded before any
lock, and a CLI sweep shares the results DB with votes and the explorer."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import threading
import time

import duckdb
import pytest
import torch

from spectrum.dashboard.service import ASSETS, ChatLimits, Dashboard, Turn, decoding_for
from spectrum.dashboard.votes import read_votes
from spectrum.errors import UserError
from spectrum.generate.chat import stream_reply
from spectrum.merge import MergeSpec
from spectrum.toy.tiny import save_tiny_pair

TOKENS = 24
GREEDY = {c: decoding_for(c, "greedy", TOKENS) for c in ("direct", "merged", "thinking")}
PROMPT = "37 + 5 - 8"
SPEC = MergeSpec("linear", 0.5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("hostile_pair"), seed=5, noise=0.6)


@pytest.fixture(scope="module")
def board(pair, tmp_path_factory):
    torch.set_num_threads(1)
    results = tmp_path_factory.mktemp("hostile_board") / "results"
    results.mkdir()
    return Dashboard(
        pair["direct"],
        pair["thinking"],
        device="cpu",
        db=results / "spectrum.duckdb",
        allowed_folders=[pair["direct"].parent],
        limits=ChatLimits(max_new_tokens=256, max_seconds=60),
    )


@pytest.fixture(scope="module")
def turn(board) -> Turn:
    return Turn(PROMPT, list(board.chat([], PROMPT, SPEC, GREEDY))[-1])


def snapshot(folder) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_overwrite_never_replaces_what_the_dashboard_did_not_make(board, pair, turn):
    board.vote([turn], "merged", GREEDY)  # the DB holds something to lose
    cases = {
        board.db.parent: "contains the results database",
        ASSETS: "is the shipped assets folder",
        pair["direct"].parent: "contains the direct parent",
    }
    for folder, expected in cases.items():
        before = snapshot(folder)
        with pytest.raises(UserError, match=expected) as refused:
            board.export(str(folder), SPEC, overwrite=True)
        assert "--" not in str(refused.value)  # page language: no CLI flags
        assert snapshot(folder) == before
    assert read_votes(board.db)  # the Weights and votes still work: nothing was deleted
    out = board.export(str(pair["direct"].parent / "export"), SPEC)
    with pytest.raises(UserError, match="already exists") as refused:
        board.export(str(out), SPEC)
    assert "--force" not in str(refused.value)
    assert board.export(str(out), MergeSpec("linear", 0.75), overwrite=True) == out


def column_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("column-", "stream_reply"))]


def test_a_prompt_past_the_context_is_refused_before_any_work(board):
    context = board.context_length
    for size in (100_000, 20_000):
        start = time.perf_counter()
        with pytest.raises(UserError) as refused:
            next(board.chat([], "7" * size, SPEC, GREEDY))
        assert time.perf_counter() - start < 1.0  # one tokenization, no generation
        message = str(refused.value)
        tokens = int(re.search(r"takes at least (\d+)", message).group(1))
        assert tokens + TOKENS > context  # both numbers, and why they do not fit
        assert f"{TOKENS} more" in message and f"is {context} tokens" in message
        assert not column_threads()
    # Short enough to pass the length bound, too long once tokenized: the exact count.
    with pytest.raises(UserError) as refused:
        next(board.chat([], "7" * context, SPEC, GREEDY))
    exact = re.search(r"takes (\d+) and max new tokens asks for (\d+) more", str(refused.value))
    assert int(exact.group(1)) > context and int(exact.group(2)) == TOKENS
    too_many = {**GREEDY, "merged": decoding_for("merged", "greedy", 257)}
    with pytest.raises(UserError, match="above this dashboard's limit of 256"):
        next(board.chat([], PROMPT, SPEC, too_many))


def test_the_largest_allowed_prompt_is_answered(board):
    context = board.context_length
    overhead = board.check_request([{"role": "user", "content": ""}], "direct", GREEDY["direct"])
    prompt = "7" * (context - TOKENS - overhead)
    conversation = [{"role": "user", "content": prompt}]
    assert board.check_request(conversation, "direct", GREEDY["direct"]) + TOKENS == context
    replies = list(board.chat([], prompt, SPEC, GREEDY))[-1]
    assert all(reply.update.finished for reply in replies.values())


def test_a_long_request_never_blocks_a_short_one(board):
    """While one page's merged answer streams, another page's chat at the same merge
    and an oversize request are served: sessions are shared, the check takes no lock."""
    slow = {c: decoding_for(c, "greedy", 200) for c in GREEDY}
    first = board.chat([], "1" * 200, SPEC, slow)
    next(first)  # the first page now holds a session on the merged model
    with board.merger.session():  # and so does any sweep or chat at this merge
        quick = list(board.chat([], PROMPT, SPEC, GREEDY))[-1]
        assert all(reply.update.finished for reply in quick.values())
        with pytest.raises(UserError, match="context"):
            next(board.chat([], "7" * 100_000, SPEC, GREEDY))
    for _ in first:
        pass


def test_wall_time_cap_ends_a_runaway_answer(board):
    model, tokenizer = board.merger.model, board.tokenizers["direct"]
    long = dataclasses.replace(GREEDY["direct"], max_new_tokens=400)
    conversation = [{"role": "user", "content": PROMPT}]
    final = list(stream_reply(model, tokenizer, conversation, long, max_time_s=0.05))[-1]
    assert final.truncated and final.n_tokens < 400


def test_set_waits_for_every_session_and_sessions_share(board):
    entered, release = threading.Barrier(3), threading.Event()

    def reader():
        with board.merger.session():
            entered.wait(timeout=30)  # both readers inside at once, or this times out
            release.wait(timeout=30)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    entered.wait(timeout=30)
    done = threading.Event()
    writer = threading.Thread(
        target=lambda: (board.merger.set(MergeSpec("linear", 0.3)), done.set())
    )
    writer.start()
    time.sleep(0.3)
    assert not done.is_set()  # set() waits for the readers
    release.set()
    writer.join(timeout=60)
    assert done.is_set() and board.merger.current.spec.lam == 0.3
    for thread in readers:
        thread.join()


def sweeping(db) -> bool:
    """The CLI sweep holds the DB's sweep lock (it writes its pid into the lock file)."""
    lock = db.with_name(f".{db.name}.sweep-lock")
    return lock.exists() and lock.read_text().startswith("pid")


def test_cli_sweep_and_the_dashboard_share_one_results_db(board, pair, turn):
    db = board.db.parent / "shared.duckdb"  # inside the page's allowed folders
    board.db = db  # the dashboard's votes go into the DB the sweep writes
    command = [
        sys.executable, "-m", "spectrum", "sweep",
        "--direct", str(pair["direct"]), "--thinking", str(pair["thinking"]),
        "--methods", "linear", "--lam", "0:1:0.5", "--bench", "synthetic",
        "--limit", "2", "--levels", "1,2", "--k", "4", "--max-new-tokens", "12",
        "--batch-size", "1", "--db", str(db),
    ]  # fmt: skip
    total = 3 * 4 * 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    votes, seen_rows, second = 0, 0, None
    while sweep.poll() is None:
        board.vote([turn], "merged", GREEDY)
        votes += 1
        if db.exists():
            try:
                seen_rows = max(seen_rows, len(board.results(str(db)).table))
            except UserError as error:
                assert "no samples yet" in str(error) or "not a results database" in str(error)
        if second is None and sweeping(db):
            with pytest.raises(UserError, match="another sweep"):  # the page's, in-process
                board.sweep(str(db), ["linear"], "0.5", "synthetic", limit=1)
            second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        time.sleep(0.2)
    _, err = sweep.communicate()
    assert sweep.returncode == 0, err.decode()[-2000:]
    assert second is not None and second.returncode == 2, second.stderr[-2000:]
    assert len(second.stderr.strip().splitlines()) == 1 and "another sweep" in second.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        key = "config_id, benchmark, problem_id, sample_idx"
        rows, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT ({key})) FROM samples"
        ).fetchone()
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert rows == distinct == total and runs == 1  # the refused sweep did no work
    assert len(read_votes(db)) == votes > 0  # every vote stored
    assert seen_rows > 0  # the explorer read rows while the sweep was writing
