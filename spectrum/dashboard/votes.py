"""Human-preference votes from the dashboard, stored in the project's DuckDB file.

One row per vote: which of the three side-by-side answers (direct, merged, thinking) a
person preferred, with the prompt, the conversation before it, the three answers, the
exact merge that produced the merged answer (method, λ, params, scope, seed) and the
decoding settings. Collected over many prompts this is a preference curve over λ.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from spectrum.errors import UserError
from spectrum.eval import store
from spectrum.merge.spec import MergeSpec

COLUMNS = ("direct", "merged", "thinking")
CHOICES = (*COLUMNS, "tie", "all_bad")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    choice VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    history VARCHAR NOT NULL,          -- JSON: the conversation before the prompt
    direct_answer VARCHAR NOT NULL,
    merged_answer VARCHAR NOT NULL,
    thinking_answer VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    lam DOUBLE NOT NULL,
    params VARCHAR NOT NULL,           -- JSON
    layers VARCHAR,
    modules VARCHAR,                   -- comma-separated, NULL = all
    seed INTEGER NOT NULL,
    direct_model VARCHAR NOT NULL,
    thinking_model VARCHAR NOT NULL,
    base_model VARCHAR,
    decoding VARCHAR NOT NULL          -- JSON
)
"""


@dataclass(frozen=True)
class Vote:
    """One preference. ``answers`` maps each of COLUMNS to its full reply text."""

    choice: str
    prompt: str
    answers: Mapping[str, str]
    spec: MergeSpec
    direct_model: str
    thinking_model: str
    base_model: str | None = None
    history: Sequence[Mapping[str, str]] = ()
    decoding: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.choice not in CHOICES:
            raise UserError(f"vote choice {self.choice!r} is not one of {', '.join(CHOICES)}")
        missing = [column for column in COLUMNS if not self.answers.get(column)]
        if missing:
            raise UserError(f"cannot vote before all three answers exist (missing: {missing})")
        if not self.prompt.strip():
            raise UserError("cannot vote on an empty prompt")


def record_vote(db_path: str | Path, vote: Vote) -> str:
    """Validate and append ``vote``; return its id. Creates the table if needed."""
    vote.validate()
    db_path = Path(db_path)
    if not db_path.parent.is_dir():
        raise UserError(f"votes database folder {db_path.parent} does not exist")
    vote_id = uuid.uuid4().hex
    row = (
        vote_id,
        datetime.now(UTC).replace(tzinfo=None),
        vote.choice,
        vote.prompt,
        json.dumps(list(vote.history), ensure_ascii=False, allow_nan=False),
        vote.answers["direct"],
        vote.answers["merged"],
        vote.answers["thinking"],
        vote.spec.method,
        vote.spec.lam,
        json.dumps(dict(vote.spec.params), sort_keys=True, allow_nan=False),
        vote.spec.layers,
        ",".join(vote.spec.modules) if vote.spec.modules else None,
        vote.spec.seed,
        vote.direct_model,
        vote.thinking_model,
        vote.base_model,
        json.dumps(dict(vote.decoding), sort_keys=True, allow_nan=False),
    )
    # One short transaction; while a sweep commits, connect waits its turn (store.py).
    with store.opened(db_path) as connection:
        connection.execute(_SCHEMA)
        placeholders = ", ".join("?" * len(row))
        connection.execute(f"INSERT INTO votes VALUES ({placeholders})", row)
    return vote_id


def read_votes(db_path: str | Path) -> list[dict[str, Any]]:
    """Every vote, oldest first, as dicts (JSON columns decoded). [] when there are none."""
    db_path = Path(db_path)
    if not db_path.is_file():
        return []
    try:
        # Read-only: another process (a sweep) may be writing the same file.
        with store.opened(db_path, read_only=True) as connection:
            tables = {row[0] for row in connection.execute("SHOW TABLES").fetchall()}
            if "votes" not in tables:
                return []
            cursor = connection.execute("SELECT * FROM votes ORDER BY created_at, id")
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    except duckdb.Error as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"cannot read votes from {db_path} ({first_line})") from None
    for row in rows:
        for key in ("history", "params", "decoding"):
            row[key] = json.loads(row[key])
        row["modules"] = row["modules"].split(",") if row["modules"] else None
    return rows


def tally(db_path: str | Path) -> dict[tuple[str, float], dict[str, int]]:
    """{(method, λ): {choice: count}} — the preference record per merge setting."""
    counts: dict[tuple[str, float], dict[str, int]] = {}
    for row in read_votes(db_path):
        per_choice = counts.setdefault((row["method"], row["lam"]), dict.fromkeys(CHOICES, 0))
        per_choice[row["choice"]] += 1
    return counts
