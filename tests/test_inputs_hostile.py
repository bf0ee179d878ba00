"""Hostile inputs (issue #20, items 4, 7, 8, 9): real files, real processes, a real page
service. Each probe must be refused with one line naming the problem, before any work, and
leave what it was given byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors import safe_open

from spectrum.dashboard.service import PAGE_SWEEP_LIMITS, ChatLimits, Dashboard
from spectrum.errors import UserError
from spectrum.eval.store import SCHEMA_VERSION
from spectrum.eval.sweep import SweepLimits
from spectrum.merge import MergeSpec

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SHIPPED_DB = Path(__file__).resolve().parents[1] / "assets" / "spectrum.duckdb"


def spectrum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spectrum", *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(done: subprocess.CompletedProcess, command: str, *expected: str) -> str:
    """The process failed with exit 2 and one stderr line naming the problem."""
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spectrum {command}: error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sweep(pair, db: Path, *extra: str) -> subprocess.CompletedProcess:
    return spectrum(
        "sweep", "--direct", pair["direct"], "--thinking", pair["thinking"], "--db", db,
        "--limit", "1", "--levels", "1", "--no-progress", *extra,
    )  # fmt: skip


# --- 7. safetensors headers ------------------------------------------------------------


def _shard_with_tensors(folder: Path, at_least: int) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    files = sorted(set(index.values()), key=lambda f: -list(index.values()).count(f))
    assert list(index.values()).count(files[0]) >= at_least
    return folder / files[0]


def _rewrite_header(shard: Path, edit) -> None:
    """Rewrite ``shard``'s JSON header with ``edit(header) -> bytes``; the data stays."""
    raw = shard.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    text = edit(header)
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def _tensors(header: dict) -> list[str]:
    names = [n for n in header if n != "__metadata__"]
    return sorted(names, key=lambda n: header[n]["data_offsets"])


def _overlap(header):  # the second tensor reads the first one's bytes
    first, second = _tensors(header)[:2]
    size = header[first]["data_offsets"][1] - header[first]["data_offsets"][0]
    start = header[second]["data_offsets"][0] - size // 2
    header[second]["data_offsets"] = [start, start + size]
    header[second]["shape"], header[second]["dtype"] = header[first]["shape"], "F32"
    return json.dumps(header).encode()


def _reversed(header):
    first = _tensors(header)[0]
    header[first]["data_offsets"] = header[first]["data_offsets"][::-1]
    return json.dumps(header).encode()


def _wrong_length(header):  # dtype × shape is not the span's length
    first = _tensors(header)[0]
    header[first]["shape"] = [1]
    return json.dumps(header).encode()


def _duplicate(header):  # the same name twice, the second pointing at other bytes
    first, second = _tensors(header)[:2]
    text = json.dumps(header)[:-1]
    return (text + f", {json.dumps(first)}: {json.dumps(header[second])}}}").encode()


def _not_an_object(header):
    return b"[1, 2, 3]"


def _offsets_shape(header):
    header[_tensors(header)[0]]["data_offsets"] = [0]
    return json.dumps(header).encode()


def _shape_text(header):
    header[_tensors(header)[0]]["shape"] = ["64", "a"]
    return json.dumps(header).encode()


def _entry_text(header):
    header[_tensors(header)[0]] = "F32"
    return json.dumps(header).encode()


LAYOUT_CASES = {"overlap": _overlap, "reversed": _reversed, "wrong length": _wrong_length}
SHAPE_CASES = {
    "duplicate name": _duplicate,
    "header not an object": _not_an_object,
    "data_offsets not a pair": _offsets_shape,
    "shape not sizes": _shape_text,
    "entry not an object": _entry_text,
}


@pytest.mark.parametrize("case", [*LAYOUT_CASES, *SHAPE_CASES])
def test_malformed_safetensors_headers_are_refused_before_any_read(tiny_pair, tmp_path, case):
    thinking = tmp_path / "thinking"
    shutil.copytree(tiny_pair["thinking"], thinking)
    shard = _shard_with_tensors(thinking, 2)
    _rewrite_header(shard, {**LAYOUT_CASES, **SHAPE_CASES}[case])
    if case in LAYOUT_CASES:  # the safetensors library refuses these files too
        with pytest.raises(Exception), safe_open(shard, "pt") as opened:  # noqa: B017
            for name in opened.keys():
                opened.get_tensor(name)
    before = digest(shard)
    out = tmp_path / "out"
    done = spectrum(
        "merge", "--direct", tiny_pair["direct"], "--thinking", thinking, "--out", out, "--quiet"
    )
    one_line(done, "merge", shard.name)
    assert not out.exists() and digest(shard) == before


# --- 8. YAML, chat templates, decoding values, integers, schema -------------------------


def _alias_bomb(pair) -> bytes:
    """Nine levels of nine aliases each: 9⁹ values once expanded, padded to 513 bytes."""
    lines = [
        f"direct: {pair['direct']}",
        f"thinking: {pair['thinking']}",
        "a: &a [x,x,x,x,x,x,x,x,x]",
    ]
    previous = "a"
    for name in "bcdefgh":
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
        previous = name
    lines.append(f"params: {{scale: *{previous}}}")
    text = ("\n".join(lines) + "\n").encode()
    assert len(text) <= 512
    return text + b"#" * (512 - len(text)) + b"\n"


def test_a_yaml_alias_bomb_is_refused(tiny_pair, tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_bytes(_alias_bomb(tiny_pair))
    assert config.stat().st_size == 513
    out = tmp_path / "out"
    one_line(spectrum("merge", "--config", config, "--out", out), "merge", "aliases expanded")
    assert not out.exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("modules: 5", "as a list of str"),
        ("device: 5", "'device' must be a str"),
        ("allow_pickle: maybe", "'allow_pickle' must be a bool"),
        ("seed: 1.5", "integer seed"),
        ("lam: 2020-01-01", "numeric λ"),
        ("lam_schedule: {a: 1}", "list of float"),
    ],
)
def test_odd_yaml_types_are_one_line(tiny_pair, tmp_path, line, expected):
    config = tmp_path / "odd.yaml"
    config.write_text(f"direct: {tiny_pair['direct']}\nthinking: {tiny_pair['thinking']}\n{line}\n")
    out = tmp_path / "out"
    one_line(spectrum("merge", "--config", config, "--out", out, "--quiet"), "merge", expected)
    assert not out.exists()


def _with_template(pair, tmp_path, template: str) -> Path:
    direct = tmp_path / "direct"
    shutil.copytree(pair["direct"], direct)
    (direct / "chat_template.jinja").write_text(template)
    return direct


RUNAWAY_TEMPLATES = {
    "a gigabyte string": ('{{ "x" * 1000000000 }}', "MiB"),
    "nested loops": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "s of CPU",
    ),
}


@pytest.mark.parametrize("case", RUNAWAY_TEMPLATES)
def test_a_runaway_chat_template_is_refused_before_generation(tiny_pair, tmp_path, case):
    template, expected = RUNAWAY_TEMPLATES[case]
    direct = _with_template(tiny_pair, tmp_path, template)
    done = spectrum(
        "generate", "--direct", direct, "--thinking", tiny_pair["thinking"],
        "--lams", "0.5", "--prompt", "hi", "--max-new-tokens", "4", "--device", "cpu",
    )  # fmt: skip
    one_line(done, "generate", "chat template", expected)


def test_the_page_refuses_a_pair_whose_template_runs_away(tiny_pair, tmp_path):
    direct = _with_template(tiny_pair, tmp_path, '{{ "x" * 10000000 }}')
    with pytest.raises(UserError, match="renders a short conversation to 10,000,000 characters"):
        Dashboard(direct, tiny_pair["thinking"], device="cpu", db=tmp_path / "r" / "db.duckdb")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--temperature", "-1"], "temperature must be a number ≥ 0"),
        (["--top-p", "5"], "top-p must be in (0, 1]"),
        (["--top-k", "-3"], "top-k must be an integer"),
        (["--seed", "3000000000"], "seed must be between 0 and 2147483647"),
        (["--max-new-tokens", str(10**12)], "max new tokens is 1,000,000,000,000"),
        (["--max-new-tokens", "0"], "max new tokens must be between 1"),
        (["--lam", "0.5,attn=0.3,attn=0.9"], "'attn' twice"),
        (["--lam", "0:inf:1"], "finite numbers"),
        (["--lam", "0:1:1e-300"], "the limit is 1,001"),
        (["--k", "1000000000"], "k) is 1,000,000,000, above the limit k=1,000"),
        (["--limit", "100000000"], "above the limit problems=100,000"),
        (["--limits", "work=1000"], "(5 answers × 32,768 max new tokens) is 163,840"),
    ],
)
def test_sweep_refuses_before_any_work(tiny_pair, tmp_path, flags, expected):
    db = tmp_path / "never.duckdb"
    one_line(sweep(tiny_pair, db, "--lam", "0:1:0.25", *flags), "sweep", expected)
    assert list(tmp_path.iterdir()) == []  # no DB, no lock file


def test_search_refuses_a_negative_budget_up_front(tiny_pair, tmp_path):
    db = tmp_path / "never.duckdb"
    done = spectrum(
        "search", "--direct", tiny_pair["direct"], "--thinking", tiny_pair["thinking"],
        "--target", "budget", "--max-tokens", "-5", "--db", db,
    )  # fmt: skip
    one_line(done, "search", "--max-tokens must be a positive number")
    assert not db.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lams", ",".join(["0.5"] * 2000)], "--lams is 2,000, above the limit grid=1,001"),
        (["--max-new-tokens", str(10**12)], "above the limit new_tokens=131,072"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
    ],
)
def test_generate_refuses_before_the_model_loads(tiny_pair, flags, expected):
    done = spectrum(
        "generate", "--direct", tiny_pair["direct"], "--thinking", tiny_pair["thinking"],
        "--prompt", "hi", "--device", "cpu", *(["--lams", "0.5"] if "--lams" not in flags else []),
        *flags,
    )  # fmt: skip
    one_line(done, "generate", expected)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lam", "0.5,attn=0.3,attn=0.9"], "'attn' twice"),
        # The page's merges take the same seed into votes.seed (INTEGER).
        (["--lam", "0.5", "--seed", "3000000000"], "merge seed must be between 0 and"),
    ],
)
def test_merge_refuses_before_any_work(tiny_pair, tmp_path, flags, expected):
    done = spectrum(
        "merge", "--direct", tiny_pair["direct"], "--thinking", tiny_pair["thinking"],
        *flags, "--out", tmp_path / "out",
    )  # fmt: skip
    one_line(done, "merge", expected)
    assert not (tmp_path / "out").exists()


def test_a_newer_schema_is_refused_naming_both_versions(tiny_pair, tmp_path):
    db = tmp_path / "future.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION + 1)])
    before = digest(db)
    expected = f"schema_version {SCHEMA_VERSION + 1}, newer than this tool's {SCHEMA_VERSION}"
    one_line(sweep(tiny_pair, db, "--lam", "0.5", "--max-new-tokens", "4"), "sweep", expected)
    one_line(spectrum("report", "--db", db, "--out", tmp_path / "r.html"), "report", expected)
    assert digest(db) == before and not (tmp_path / "r.html").exists()


# --- 4. bounded work from the page, limits shown ----------------------------------------


@pytest.fixture(scope="module")
def board(tiny_pair, tmp_path_factory):
    torch.set_num_threads(1)
    results = tmp_path_factory.mktemp("inputs_board") / "results"
    results.mkdir()
    return Dashboard(
        tiny_pair["direct"],
        tiny_pair["thinking"],
        device="cpu",
        db=results / "spectrum.duckdb",
        limits=ChatLimits(max_new_tokens=64, max_seconds=60),
    )


@pytest.mark.parametrize(
    ("grid", "kwargs", "expected"),
    [
        ("0:1:1e-300", {}, "has 1e+300 values; the limit is 101"),
        ("0:inf:1", {}, "finite numbers"),
        ("0.5", {"k": 10**9}, "samples per problem (k) is 1,000,000,000, above the limit k=16"),
        ("0.5", {"limit": 10**6}, "problems per benchmark is 1,000,000"),
        ("0.5", {"max_new_tokens": 10**12}, "above the limit new_tokens=4,096"),
        ("0.5", {"limit": float("inf")}, "problems must be a whole number"),
        ("0:1:0.01", {"limit": 200, "max_new_tokens": 4096}, "above the limit work=20,000,000"),
    ],
)
def test_a_page_sweep_past_a_limit_is_refused_before_any_work(board, grid, kwargs, expected):
    db = board.db.parent / "never.duckdb"
    args = {"limit": 1, **kwargs}
    with pytest.raises(UserError) as refused:
        board.sweep(str(db), ["linear"], grid, "synthetic", **args)
    assert expected in str(refused.value) and "--" not in str(refused.value)
    assert not db.exists() and not list(db.parent.glob(".never*"))


@pytest.mark.parametrize("what", ["results", "samples", "leaderboard", "export"])
def test_nul_bytes_in_page_paths_are_one_line(board, what):
    path = str(board.db.parent / "a\0b.duckdb")
    with pytest.raises(UserError, match="NUL byte"):
        if what == "samples":
            board.samples(path, "synthetic", "linear", 0.5)
        elif what == "export":
            board.export(path, MergeSpec("linear", 0.5))
        else:
            getattr(board, what)(path)


def test_limits_are_shown_in_help_and_page():
    from spectrum.commands.sweep import SWEEP_LIMITS
    from ui.command import PAGE_SWEEP_LIMITS as PAGE_TEXT

    assert SWEEP_LIMITS == SweepLimits().describe()
    assert PAGE_TEXT == PAGE_SWEEP_LIMITS.describe()
    for command in ("sweep", "search", "generate"):
        shown = " ".join(spectrum(command, "--help").stdout.split())
        assert SWEEP_LIMITS in shown, shown
    shown = " ".join(spectrum("app", "--help").stdout.split())
    assert PAGE_TEXT in shown, shown


# --- 9. one line for the user -----------------------------------------------------------


def _truncated(path: Path) -> None:
    path.write_bytes(SHIPPED_DB.read_bytes()[: SHIPPED_DB.stat().st_size // 10])


BAD_DBS = {
    "truncated": _truncated,
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("not a database\n" * 50),
    "directory": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("case", BAD_DBS)
def test_an_unusable_db_is_one_line_and_left_alone(tiny_pair, tmp_path, case):
    db = tmp_path / "bad.duckdb"
    BAD_DBS[case](db)
    before = None if db.is_dir() else digest(db)
    one_line(spectrum("report", "--db", db, "--out", tmp_path / "r.html"), "report", str(db))
    one_line(sweep(tiny_pair, db, "--lam", "0.5", "--max-new-tokens", "4"), "sweep", str(db))
    assert db.is_dir() if before is None else digest(db) == before
    assert not (tmp_path / "r.html").exists()


@pytest.fixture
def read_only(tmp_path):
    """``tmp_path/ro``: a read-only bind mount of ``tmp_path/rw`` (needs root)."""
    (tmp_path / "rw").mkdir()
    point = tmp_path / "ro"
    point.mkdir()
    done = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(tmp_path / "rw"), str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()})")
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def test_a_read_only_mount_is_one_line(tiny_pair, read_only):
    done = sweep(tiny_pair, read_only / "results.duckdb", "--lam", "0.5", "--max-new-tokens", "4")
    one_line(done, "sweep", "Read-only file system")


def test_a_malformed_tokenizer_is_one_line(tiny_pair, tmp_path):
    direct = tmp_path / "direct"
    shutil.copytree(tiny_pair["direct"], direct)
    (direct / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    done = spectrum(
        "generate", "--direct", direct, "--thinking", tiny_pair["thinking"],
        "--lams", "0.5", "--prompt", "hi", "--max-new-tokens", "4", "--device", "cpu",
    )  # fmt: skip
    one_line(done, "generate", "cannot load the tokenizer of")


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_log(tmp_path):
    """A DuckDB file with a foreign ``samples`` table: no check foresees it, so it is an
    internal error: one line and exit 1 on the terminal, the traceback in the file named."""
    db = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE samples (x INTEGER)")
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "spectrum", "report", "--db", str(db), "--out", str(tmp_path / "r")],
        env={**ENV, "SPECTRUM_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectrum report: internal error: "), lines
    (log,) = (cache / "logs").iterdir()
    assert str(log) in lines[0]
    assert log.read_text().startswith("Traceback") and "BinderException" in log.read_text()
