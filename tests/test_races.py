"""Two visitors at once on one dashboard (issue #20): a merge is held for the whole of its
use, so what one page generates never runs on a merge another page set in between.

Everything runs against ``python app.py`` on the embedded pair, driven by separate
gradio_client clients (separate pages) over HTTP. Page sweeps also write only where they
may: never the shipped DB, never a parent's folder.
"""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
from gradio_client import Client
from test_app_server import ALL_MODULES, REPO, SHIPPED_DB, launch_app, without_footers

from spectrum.eval.benchmarks.synthetic import make_problems
from spectrum.live import LiveMerger
from spectrum.merge import MergeSpec

# What a stored sample says, less what varies run to run (ids, times, latencies).
ROW = "method, lam, benchmark, problem_id, sample_idx, response, n_tokens, finished, correct"
SWEEP_TOKENS = 24
GRIDS = ("0.1,0.3", "0.7,0.9")  # the two pages' λ grids: no λ in common
RACE_RUNS = 30


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("races")


@pytest.fixture(scope="module")
def url(folder) -> str:
    """The app on a copy of the embedded pair kept in its results folder, ``folder`` (where
    the sweeps' DBs go): the parents' own folders are inside the page's allowed folders."""
    for role in ("direct", "thinking", "base"):
        shutil.copytree(REPO / "assets" / "pair" / role, folder / "pair" / role)
    pair = [f"--{role}={folder / 'pair' / role}" for role in ("direct", "thinking", "base")]
    with launch_app(folder, *pair) as address:
        yield address


def page(url: str) -> Client:
    return Client(url, verbose=False)


def sweep(
    client: Client, db: Path, grid: str, method: str = "linear", tokens: int = SWEEP_TOKENS
) -> str:
    """One page sweep (5 synthetic problems per λ, one sample each); its status line."""
    out = client.predict(str(db), [method], grid, "synthetic", 1, 1, tokens, api_name="/sweep")
    return out[0]


def rows(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT {ROW} FROM samples ORDER BY lam, problem_id").fetchall()


def test_two_page_sweeps_at_different_lams_store_exactly_their_own_rows(url, folder):
    """Each page sweeps its own λ grid into its own DB, both at once; every DB holds
    exactly the rows its sweep stores alone.

    Before the merge was held for a whole cell (a cell's ``set()`` and its generation were
    two steps another sweep could step between), runs of this test on that code saw 1 of 9,
    16 of 30 and 8 of 30 concurrent runs store whole cells generated under the other page's
    merge: 30 runs see it with near certainty.
    """
    alone = {}
    for grid in GRIDS:
        db = folder / f"alone-{grid}.duckdb"
        assert sweep(page(url), db, grid).startswith("Done: 10 samples generated")
        alone[grid] = rows(db)
    assert alone[GRIDS[0]] != alone[GRIDS[1]]  # the two merges answer differently
    pages = [page(url) for _ in GRIDS]
    wrong = []
    for run in range(RACE_RUNS):
        dbs = [folder / f"race{run}-{grid}.duckdb" for grid in GRIDS]
        with ThreadPoolExecutor(len(GRIDS)) as pool:
            jobs = [
                pool.submit(sweep, client, db, grid)
                for client, db, grid in zip(pages, dbs, GRIDS, strict=True)
            ]
            statuses = [job.result() for job in jobs]
        assert all(status.startswith("Done: 10 samples generated") for status in statuses)
        wrong += [
            (run, grid) for db, grid in zip(dbs, GRIDS, strict=True) if rows(db) != alone[grid]
        ]
    assert not wrong, f"sweeps stored rows of the other page's merge: {wrong}"


CHAT_TOKENS = 48
PROMPT = make_problems(2, 1, seed=3)[0].messages[0]["content"]
# task_arithmetic is not a linear merge: the live merger (one shared model) answers it.
CHAT_LAMS = (0.3, 0.9)
CHAT_RUNS = 10
SWEPT = ("0.5:0.9:0.05", "task_arithmetic", 8)  # grid, method, max new tokens
SWEEPS_WHILE_CHATTING = 10


def merged_answer(
    client: Client, api: str = "/regenerate", tokens: int = CHAT_TOKENS
) -> tuple[str, list[str]]:
    """A greedy turn's merged column (its label, its texts without the stats line): the
    page's first turn asked again (the page's history stays one turn long)."""
    args = (PROMPT,) if api == "/chat" else ()
    out = client.predict(*args, "greedy", tokens, 0.6, 0.95, 20, api_name=api)
    merged = out[1]
    return merged["label"], without_footers(merged)


def chat_page(
    url: str, lam: float, method: str = "task_arithmetic"
) -> tuple[Client, tuple[str, list[str]]]:
    """A page at ``lam`` of ``method`` and its first (greedy) turn, asked alone."""
    client = page(url)
    status = client.predict(method, lam, "", ALL_MODULES, 0, api_name="/set_merge")
    assert f"{method} · λ {lam:.2f}" in status
    return client, merged_answer(client, "/chat")


def test_two_chats_at_different_lams_answer_as_each_lam_alone(url):
    """Two pages chat at once on the live merger, each at its own λ; each answer is its
    λ's answer alone (greedy), labelled with it.

    This one passed before the merge was held for a whole turn too (30 of 30 runs in one
    try): chats already took a dashboard-wide claim around their set-and-generate. What a
    chat lost was the race against a sweep, which took no claim (the next test).
    """
    pages, alone = zip(*(chat_page(url, lam) for lam in CHAT_LAMS), strict=True)
    assert alone[0][0] == "Merged — task_arithmetic · λ 0.30" and alone[0] != alone[1]
    wrong = []
    for run in range(CHAT_RUNS):
        with ThreadPoolExecutor(len(pages)) as pool:
            answers = list(pool.map(merged_answer, pages))
        wrong += [(run, lam) for lam, a, b in zip(CHAT_LAMS, answers, alone, strict=True) if a != b]
    assert not wrong, f"chats answered with the other page's merge: {wrong}"


def test_a_chat_never_generates_with_the_merge_a_sweep_set_meanwhile(url, folder):
    """Page A chats again and again at ties λ 0.3 while page B sweeps nine λ of
    task_arithmetic (a re-merge, with a re-preparation, at every cell); every answer is
    the one ties λ 0.3 gives alone, and every sweep stores the rows it stores alone.

    Before the merge was held for a whole turn, a sweep's ``set()`` could land between a
    chat's ``set()`` and its generation: two runs of this test on that code had 33 of 58
    and 39 of 64 chat turns answer (truthfully labelled) with the sweep's merge. (The sweep
    rows never came out wrong in those runs; the test above is the one that catches that.)
    """
    chatter, _ = chat_page(url, CHAT_LAMS[0], "ties")
    alone_answer = merged_answer(chatter, tokens=16)
    alone_db = folder / "chat-alone.duckdb"
    assert sweep(page(url), alone_db, *SWEPT).startswith("Done: 45 samples")
    alone_rows = rows(alone_db)
    sweeper = page(url)
    chats, wrong_answers, wrong_rows = 0, 0, []
    for run in range(SWEEPS_WHILE_CHATTING):
        db = folder / f"chat-race{run}.duckdb"
        with ThreadPoolExecutor(1) as pool:
            swept = pool.submit(sweep, sweeper, db, *SWEPT)
            while True:  # at least one turn per sweep, as many as its run lasts
                wrong_answers += merged_answer(chatter, tokens=16) != alone_answer
                chats += 1
                if swept.done():
                    break
            assert swept.result().startswith("Done: 45 samples")
        if rows(db) != alone_rows:
            wrong_rows.append(run)
    assert (wrong_answers, wrong_rows) == (0, []), f"{wrong_answers} of {chats} turns wrong"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and its content hash."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_page_sweep_never_writes_the_shipped_db_or_a_parents_folder(url, folder):
    """The issue's probe: the DB field set to ``assets/spectrum.duckdb`` modified the
    tracked DB, and a path inside a parent's folder put DB and lock files there."""
    (folder / "into-direct").symlink_to(folder / "pair" / "direct")
    targets = {
        "assets/spectrum.duckdb": "the shipped assets folder",
        str(SHIPPED_DB): "the shipped assets folder",
        "assets/pair/direct/results.duckdb": "the shipped assets folder",
        str(folder / "pair" / "thinking" / "results.duckdb"): "the thinking model's folder",
        str(folder / "pair" / "base" / "new" / "results.duckdb"): "the base model's folder",
        str(folder / "into-direct" / "results.duckdb"): "the direct model's folder",
    }
    before = {place: snapshot(place) for place in (REPO / "assets", folder / "pair")}
    client = page(url)
    for target, where in targets.items():
        with pytest.raises(Exception, match=f"inside {where}") as refused:
            sweep(client, Path(target), "0.5")
        assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
    assert {place: snapshot(place) for place in before} == before
    # Beside the parents (not inside one) is the page's own results folder: allowed.
    assert sweep(client, folder / "pair" / "beside.duckdb", "0.5").startswith("Done: 5 samples")


def test_holding_sets_only_when_needed_and_refuses_inside_its_own_session(tiny_pair):
    """In process, on a real live merger: ``holding`` re-merges only what is not loaded,
    yields what it holds, and inside this thread's own session asks for a re-merge that
    could never happen (as ``set()`` does) without leaving the lock held."""
    merger = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    with merger.holding(MergeSpec("linear", 0.4)) as held:
        assert (held.spec.lam, held.version) == (0.4, 1)
        with merger.holding(MergeSpec("linear", 0.4)) as again:  # nested, already loaded
            assert again.version == 1
        with pytest.raises(RuntimeError, match="own session"):
            with merger.holding(MergeSpec("linear", 0.6)):
                pass
    assert merger.set(MergeSpec("linear", 0.6)).version == 2  # nothing was left held
