"""The DuckDB results store (schema: docs/SCHEMA.md).

Rows go in as whole DataFrames inside one transaction each: a process killed at any
moment leaves either the whole batch or none of it, and the primary key on
(config_id, benchmark, problem_id, sample_idx) makes a duplicate impossible.

Many users, one file: DuckDB lets one process at a time open a file for writing (and
readers only while none writes). So every writer holds a connection for one short
transaction (``opened``: open, write, close) and ``connect`` retries while another process
holds the file, for up to ``LOCK_WAIT_S``: a sweep, a vote and the explorer interleave
instead of failing. Sweeps into one file run one at a time (``sweep_lock``): a second one
is refused before it does any work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd

from spectrum.errors import UserError
from spectrum.eval.style_bleed import style_bleed

SCHEMA_VERSION = 3
LOCK_WAIT_S = 60.0  # how long to wait for another process's transaction before giving up

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, command VARCHAR, config JSON,
    decoding JSON, versions JSON, git_revision VARCHAR,
    direct VARCHAR, thinking VARCHAR, base VARCHAR,
    direct_hash VARCHAR, thinking_hash VARCHAR, base_hash VARCHAR
);
CREATE TABLE IF NOT EXISTS samples (
    config_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL, lam DOUBLE NOT NULL, params JSON, layers VARCHAR, modules VARCHAR,
    merge_seed INTEGER, temperature DOUBLE, top_p DOUBLE, top_k INTEGER,
    max_new_tokens INTEGER, do_sample BOOLEAN,
    benchmark VARCHAR NOT NULL, level INTEGER, problem_id VARCHAR NOT NULL,
    sample_idx INTEGER NOT NULL,
    prompt VARCHAR, response VARCHAR, n_tokens INTEGER, finished BOOLEAN, thinks BOOLEAN,
    extracted VARCHAR, gold VARCHAR, correct BOOLEAN, latency_s DOUBLE, created_at TIMESTAMP,
    PRIMARY KEY (config_id, benchmark, problem_id, sample_idx)
);
-- Added in schema 2: λ per module kind (JSON {kind: λ}), NULL for plain merges.
ALTER TABLE samples ADD COLUMN IF NOT EXISTS module_lams JSON;
-- Added in schema 3: whose chat template the row ran with (direct, thinking, or shared
-- when both parents have the same one), and the response tokens the generator inserted
-- (budget forcing), which n_tokens includes. Older rows read NULL and 0.
ALTER TABLE samples ADD COLUMN IF NOT EXISTS template VARCHAR;
ALTER TABLE samples ADD COLUMN IF NOT EXISTS n_inserted INTEGER DEFAULT 0;
-- Added without a schema bump (additive; readers of older files check the columns): the
-- style-bleed score (spectrum.eval.style_bleed; filled for older rows on write-open by
-- fill_style_bleed) and a judge's verdict on judged benchmarks (creative_writing).
ALTER TABLE samples ADD COLUMN IF NOT EXISTS style_bleed INTEGER;
ALTER TABLE samples ADD COLUMN IF NOT EXISTS judge_score DOUBLE;
ALTER TABLE samples ADD COLUMN IF NOT EXISTS judge_scores JSON;
ALTER TABLE samples ADD COLUMN IF NOT EXISTS judge_text VARCHAR;
ALTER TABLE samples ADD COLUMN IF NOT EXISTS judge_error VARCHAR;
-- Added in schema 3: configurations re-evaluated on fresh problems (spectrum confirm).
CREATE TABLE IF NOT EXISTS confirmations (
    confirmation_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, benchmark VARCHAR,
    method VARCHAR, lam DOUBLE, data_seed INTEGER, k INTEGER, n_problems INTEGER,
    config_id VARCHAR, direct_config_id VARCHAR, thinking_config_id VARCHAR, result JSON
);
CREATE TABLE IF NOT EXISTS weight_stats (
    analysis_id VARCHAR, direct VARCHAR, thinking VARCHAR, direct_hash VARCHAR,
    thinking_hash VARCHAR, scope VARCHAR, key VARCHAR, numel BIGINT,
    delta_sq DOUBLE, direct_sq DOUBLE, rel_distance DOUBLE
);
CREATE TABLE IF NOT EXISTS weight_hist (
    analysis_id VARCHAR, bin_left DOUBLE, bin_right DOUBLE, count BIGINT
);
CREATE TABLE IF NOT EXISTS weight_energy (
    analysis_id VARCHAR, fraction DOUBLE, share DOUBLE, reference DOUBLE
);
-- Added with schema 3 (additive): NLL along the linear path (spectrum analyze --loss-path).
CREATE TABLE IF NOT EXISTS loss_path (
    path_id VARCHAR, created_at TIMESTAMP, direct VARCHAR, thinking VARCHAR,
    direct_hash VARCHAR, thinking_hash VARCHAR, text_file VARCHAR, text_sha256 VARCHAR,
    problems_per_level INTEGER, data_seed INTEGER, max_new_tokens INTEGER,
    source VARCHAR, lam DOUBLE, n_sequences INTEGER, n_tokens BIGINT, nll DOUBLE
);
"""

# Per problem first, then per configuration: every problem weighs the same.
_VIEWS = """
CREATE OR REPLACE VIEW problem_stats AS
SELECT config_id, benchmark, problem_id, any_value(level) AS level,
       any_value(method) AS method, any_value(lam) AS lam, count(*) AS n,
       sum(correct::INTEGER) AS n_correct, avg(correct::INTEGER) AS accuracy,
       avg(n_tokens) AS tokens, avg(thinks::INTEGER) AS think_rate,
       1 - avg(finished::INTEGER) AS truncation_rate
FROM samples GROUP BY config_id, benchmark, problem_id;

CREATE OR REPLACE VIEW aggregates AS
SELECT config_id, benchmark, any_value(method) AS method, any_value(lam) AS lam,
       count(*) AS n_problems, sum(n) AS n_samples, avg(accuracy) AS accuracy,
       avg(tokens) AS tokens, avg(think_rate) AS think_rate,
       avg(truncation_rate) AS truncation_rate
FROM problem_stats GROUP BY config_id, benchmark;

CREATE OR REPLACE VIEW pareto AS
SELECT a.* FROM aggregates a
WHERE NOT EXISTS (
    SELECT 1 FROM aggregates b
    WHERE b.benchmark = a.benchmark AND b.method = a.method
      AND b.accuracy >= a.accuracy AND b.tokens <= a.tokens
      AND (b.accuracy > a.accuracy OR b.tokens < a.tokens)
);
"""


def config_id(config: dict) -> str:
    """A stable id for everything that determines a sample's distribution."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def connect(
    path: str | Path, *, read_only: bool = False, wait_s: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """Open the DB (creating the schema when writing), waiting while another holds it.

    A file DuckDB cannot read (empty, text, truncated, a folder, a read-only mount) and a
    DB written by a newer version of this tool (its ``schema_version``) are refused with
    one line, before anything is written into them.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"the results database {path} is a folder; name a .duckdb file")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the folder of {path} ({error.strerror})") from None
    deadline, pause = time.monotonic() + wait_s, 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as error:
            if not _busy(error):
                raise unreadable(path, error) from None
            if time.monotonic() >= deadline:
                raise UserError(
                    f"the results database {path} is busy: another process has been writing "
                    f"it for over {wait_s:g} s; try again later"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
    try:
        _check_schema_version(con, path)
        if not read_only:
            _bring_up_to_date(con)
    except BaseException as error:
        con.close()
        if _damaged(error):
            raise unreadable(path, error) from None
        raise
    return con


# What a file written by this code holds: tables, views and the additive column changes.
_DDL_KEY = hashlib.sha256((_TABLES + _VIEWS).encode()).hexdigest()[:16]


def _bring_up_to_date(con: duckdb.DuckDBPyConnection) -> None:
    """Tables, views, style-bleed scores and the schema version, each written only when
    missing: a file already up to date is not written by opening it (so a damaged one is
    refused on its first read, untouched)."""
    marks = {"schema_ddl": _DDL_KEY, "schema_version": str(SCHEMA_VERSION)}
    if any(_meta_value(con, key) != value for key, value in marks.items()):
        _read_everything(con)  # before changing a file, be sure all of it reads
        con.execute(_TABLES)
        con.execute(_VIEWS)
        for key, value in marks.items():
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
    fill_style_bleed(con)


def _read_everything(con: duckdb.DuckDBPyConnection) -> None:
    """Read every row of every table (a damaged block raises here, before any write); once
    per file and code version, when its tables are brought up to date."""
    tables = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
    ).fetchall()
    for (table,) in tables:
        con.execute(f'SELECT sum(hash(COLUMNS(*))) FROM "{table}"').fetchone()


def _meta_value(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    try:
        row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    except duckdb.CatalogException:  # a new file: no meta table yet
        return None
    return None if row is None else row[0]


def _damaged(error: BaseException) -> bool:
    """A file cut short or overwritten past what its catalog promised: DuckDB says so with
    an IO error, or with a bare checksum error once it reads a block."""
    return isinstance(error, duckdb.IOException) or (
        isinstance(error, duckdb.Error) and "Corrupt database file" in str(error)
    )


def fill_style_bleed(con: duckdb.DuckDBPyConnection) -> int:
    """Score the rows that have no style-bleed score yet (rows written before the column
    existed, or by an older tool) from their stored response; return how many. Keyed on
    the NULLs, not on a version: running it again finds none."""
    missing = con.execute(
        "SELECT config_id, benchmark, problem_id, sample_idx, response FROM samples "
        "WHERE style_bleed IS NULL"
    ).df()
    if missing.empty:
        return 0
    missing["style_bleed"] = [style_bleed(text) for text in missing.pop("response")]
    con.register("_bleed", missing)
    try:
        with transaction(con):
            con.execute(
                "UPDATE samples SET style_bleed = b.style_bleed FROM _bleed b "
                "WHERE samples.config_id = b.config_id AND samples.benchmark = b.benchmark "
                "AND samples.problem_id = b.problem_id AND samples.sample_idx = b.sample_idx"
            )
    finally:
        con.unregister("_bleed")
    return len(missing)


def unreadable(path: Path, error: duckdb.Error) -> UserError:
    """The one line for a DB file DuckDB cannot use (corrupt, not a DB, not writable)."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UserError(f"cannot use the results database {path}: {reason}")


def _check_schema_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a DB from a newer version of this tool: writing it would relabel it as ours
    and reading it may misread columns this version does not know."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:  # no meta table: a new file (or an older one)
        return
    found = row[0] if row else None
    if found is None:
        return
    if not str(found).isdigit():
        raise UserError(
            f"{path} has an unknown schema_version {found!r}; this tool writes {SCHEMA_VERSION}"
        )
    if int(found) > SCHEMA_VERSION:
        raise UserError(
            f"{path} has schema_version {found}, newer than this tool's {SCHEMA_VERSION}; "
            "use the newer thinking-spectrum that wrote it"
        )


def _busy(error: duckdb.Error) -> bool:
    """Another process holds the file's lock, or this one has it open the other way."""
    text = str(error)
    return "Could not set lock" in text or "different configuration" in text


@contextmanager
def opened(
    path: str | Path, *, read_only: bool = False, wait_s: float = LOCK_WAIT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for one short block, closed after it so other processes get their turn."""
    con = connect(path, read_only=read_only, wait_s=wait_s)
    try:
        yield con
    except duckdb.Error as error:
        if _damaged(error):  # a file truncated past what its catalog promised
            raise unreadable(Path(path), error) from None
        raise
    finally:
        con.close()


@contextmanager
def sweep_lock(path: str | Path) -> Iterator[None]:
    """Held by the one sweep writing into ``path``; a second is refused at once.

    A lock file beside the DB (``flock``: the kernel drops it when the process dies, so a
    killed sweep never blocks the next one).
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.sweep-lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as error:
        raise UserError(
            f"cannot write beside the results database {path} ({error.strerror})"
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"another sweep ({holder}) is writing into {path}; wait for it to finish "
                "or write into another results database"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All or nothing: a killed process or an error leaves none of the block's writes."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Insert a DataFrame in one statement (columns matched by name), inside the caller's
    transaction if there is one."""
    if frame.empty:
        return
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    con.register("_batch", frame)
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _batch")
    finally:
        con.unregister("_batch")


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Insert a DataFrame as one transaction."""
    with transaction(con):
        insert(con, table, frame)


def done_keys(con: duckdb.DuckDBPyConnection, cid: str, benchmark: str) -> set[tuple[str, int]]:
    """(problem_id, sample_idx) already committed for one configuration and benchmark."""
    rows = con.execute(
        "SELECT problem_id, sample_idx FROM samples WHERE config_id = ? AND benchmark = ?",
        [cid, benchmark],
    ).fetchall()
    return {(p, int(s)) for p, s in rows}
