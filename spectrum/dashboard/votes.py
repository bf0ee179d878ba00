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
    decoding VARCHAR NOT NULL,         -- JSON
    blind BOOLEAN DEFAULT false        -- cast in arena mode: names hidden until the vote
)
"""
# Votes files written before arena mode lack the column; old rows read as not blind.
_MIGRATE = "ALTER TABLE votes ADD COLUMN IF NOT EXISTS blind BOOLEAN DEFAULT false"
_NAMES = (
    "id, created_at, choice, prompt, history, direct_answer, merged_answer, thinking_answer, "
    "method, lam, params, layers, modules, seed, direct_model, thinking_model, base_model, "
    "decoding, blind"
)


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
    blind: bool = False

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
        vote.blind,
    )
    # One short transaction; while a sweep commits, connect waits its turn (store.py).
    with store.opened(db_path) as connection:
        connection.execute(_SCHEMA)
        connection.execute(_MIGRATE)
        placeholders = ", ".join("?" * len(row))
        connection.execute(f"INSERT INTO votes ({_NAMES}) VALUES ({placeholders})", row)
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


# Elo as Chatbot Arena's first leaderboards computed it (online updates over the battles in
# the order they were voted, K = 4, base 10, scale 400, start 1000), with a percentile
# bootstrap over votes for its interval: https://lmsys.org/blog/2023-05-03-arena/
ELO_K, ELO_SCALE, ELO_START = 4.0, 400.0, 1000.0
WILSON_Z = 1.959963984540054  # 95 %


@dataclass(frozen=True)
class Standing:
    """One model's record: chosen as best in ``wins`` of the ``votes`` it answered in."""

    model: str  # "direct", "thinking" or the merged model's "method@λ"
    votes: int
    wins: int
    win_low: float
    win_high: float
    elo: float
    elo_low: float
    elo_high: float

    @property
    def win_rate(self) -> float:
        return self.wins / self.votes


def wilson(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest at 0 and at n successes."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def battles(vote: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """The pairwise results one three-way vote states: (a, b, score of a).

    The chosen answer beats the other two (their order between them is unknown, so no
    battle); "tie" and "all bad" are draws among all three, as Arena counts "both bad"."""
    players = player_names(vote)
    if vote["choice"] in COLUMNS:
        winner = players[vote["choice"]]
        return [(winner, players[c], 1.0) for c in COLUMNS if c != vote["choice"]]
    ordered = [players[c] for c in COLUMNS]
    return [(a, b, 0.5) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]


def player_names(vote: Mapping[str, Any]) -> dict[str, str]:
    return {"direct": "direct", "merged": f"{vote['method']}@{vote['lam']:g}",
            "thinking": "thinking"}  # fmt: skip


def elo_ratings(votes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    ratings: dict[str, float] = {}
    for vote in votes:
        for a, b, score in battles(vote):
            ra, rb = ratings.setdefault(a, ELO_START), ratings.setdefault(b, ELO_START)
            expected = 1 / (1 + 10 ** ((rb - ra) / ELO_SCALE))
            ratings[a] = ra + ELO_K * (score - expected)
            ratings[b] = rb - ELO_K * (score - expected)
    return ratings


def leaderboard(db_path: str | Path, *, rounds: int = 200, seed: int = 0) -> list[Standing]:
    """Every model that answered a vote, best Elo first: win rate with its Wilson interval,
    Elo with a 95 % bootstrap interval (votes resampled, their order kept)."""
    import random

    votes = read_votes(db_path)
    if not votes:
        return []
    counts: dict[str, list[int]] = {}
    for vote in votes:
        for column, name in player_names(vote).items():
            record = counts.setdefault(name, [0, 0])
            record[0] += 1
            record[1] += vote["choice"] == column
    elo = elo_ratings(votes)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in counts}
    for _ in range(rounds):
        picks = sorted(rng.randrange(len(votes)) for _ in votes)
        for name, rating in elo_ratings([votes[i] for i in picks]).items():
            samples[name].append(rating)
    standings = []
    for name, (n, wins) in counts.items():
        drawn = sorted(samples[name]) or [elo[name]]
        low, high = drawn[int(0.025 * (len(drawn) - 1))], drawn[int(0.975 * (len(drawn) - 1))]
        standings.append(Standing(name, n, wins, *wilson(wins, n), elo[name], low, high))
    return sorted(standings, key=lambda s: -s.elo)
