"""Selection apart from evaluation: a configuration picked from a sweep, re-evaluated on
fresh held-out problems with the parents on the same problems (``spectrum confirm``).

A sweep's best λ is chosen on the sweep's own problems, so its numbers flatter it. A
confirmation takes the sweep's recorded settings (``runs.config``), draws problems with
another data seed, drops any problem the DB has already seen on that benchmark, runs the
configuration and the two parents (linear λ = 0 and 1) on what is left, and stores the
paired comparisons in ``confirmations``. Its samples stay in ``samples`` (their data seed
makes their configuration ids new) but ``results.summaries`` leaves them out of the sweep's
own tables: the report states them as confirmations.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from spectrum.errors import UserError
from spectrum.eval import store
from spectrum.eval.metrics import check_interval
from spectrum.eval.results import (
    confirmation_ids,
    difference_columns,
    paired_difference,
    summaries,
)
from spectrum.eval.sweep import Sweeper, SweepSpec, default_provider
from spectrum.merge.spec import check_lam

_TUPLES = ("methods", "lams", "benchmarks", "levels", "modules", "budgets", "baseline_lams")


def parse_config(text: str) -> tuple[str, float]:
    """``linear@0.85`` → ("linear", 0.85)."""
    method, at, lam = text.partition("@")
    try:
        if not at or not method:
            raise ValueError
        return method, check_lam(float(lam))
    except ValueError:
        raise UserError(f"--config {text!r}: write METHOD@λ, e.g. linear@0.85") from None


def recorded_spec(con, method: str, lam: float) -> SweepSpec:
    """The settings of the latest sweep (not a confirmation) that evaluated ``method`` at
    ``lam``."""
    row = con.execute(
        "SELECT r.config FROM runs r JOIN (SELECT DISTINCT run_id FROM samples "
        "WHERE method = ? AND lam = ? AND NOT list_contains(?, config_id)) s USING (run_id) "
        "ORDER BY r.created_at DESC LIMIT 1",
        [method, lam, confirmation_ids(con)],
    ).fetchone()
    if row is None:
        raise UserError(f"the database has no sweep of {method} at λ={lam:g} to confirm")
    known = {f.name for f in fields(SweepSpec)}
    config = {k: v for k, v in json.loads(row[0]).items() if k in known}
    for key in _TUPLES:
        if config.get(key) is not None:
            config[key] = tuple(config[key])
    config["module_lams"] = {k: tuple(v) for k, v in (config.get("module_lams") or {}).items()}
    return SweepSpec(**config)


def confirm(
    db: str | Path,
    config: str,
    *,
    data_seed: int | None = None,
    limit: int | None = None,
    k: int | None = None,
    batch_size: int | None = None,
    margin: float = 0.0,
    interval: str = "auto",
    sample: bool = False,
    provider_factory=default_provider,
    progress: bool = False,
    command: str = "",
) -> pd.DataFrame:
    """Re-evaluate ``config`` (METHOD@λ) on fresh problems and store the confirmation:
    one row per benchmark, the paired differences against both parents with verdicts.
    ``sample``: sample with the per-model settings even if the sweep was greedy (for
    k > 1). ``batch_size``: units per cell instead of the sweep's (the configuration ids do
    not depend on it; sampled rows do, through their cells' seeds)."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    check_interval(interval)
    if margin < 0 or any(n is not None and n < 1 for n in (limit, k, batch_size)):
        raise UserError("--margin must be at least 0, --limit, --k and --batch-size at least 1")
    method, lam = parse_config(config)
    with store.opened(db, read_only=True) as con:
        spec = recorded_spec(con, method, lam)
        seed = spec.data_seed + 1 if data_seed is None else data_seed
        if seed == spec.data_seed:
            raise UserError(
                f"--data-seed {seed} is the sweep's own: pick another for fresh problems"
            )
        seen = _seen_problems(con, seed)
    decoding = dict(spec.decoding)
    if sample:
        decoding.pop("do_sample", None)
    fresh = replace(
        spec, methods=(method,), lams=(lam,), data_seed=seed, limit=limit or spec.limit,
        k=k or spec.k, batch_size=batch_size or spec.batch_size, budgets=(), no_thinking=False,
        module_lams={}, decoding=decoding, checkpoints={},
    )  # fmt: skip
    sweeper = Sweeper(fresh, db, provider_factory=provider_factory, progress=progress,
                      command=command)  # fmt: skip
    try:
        for bench, problems in sweeper.problems.items():
            sweeper.problems[bench] = [p for p in problems if p.id not in seen.get(bench, ())]
            if not sweeper.problems[bench]:
                raise UserError(f"{bench}: every problem of data seed {seed} was seen already")
        sweeper.run(methods=("linear",), lams=(0.0, 1.0))
        sweeper.run(methods=(method,), lams=(lam,))
        ids = {
            "config": sweeper.config_id(method, lam),
            "direct": sweeper.config_id("linear", 0.0),
            "thinking": sweeper.config_id("linear", 1.0),
        }
    finally:
        sweeper.close()
    with store.opened(db, read_only=True) as con:
        table = summaries(con, config_ids=list(ids.values()), interval=interval)
    found = _confirmations(table, ids, method, lam, fresh, margin, interval)
    with store.opened(db) as con:
        store.insert_frame(con, "confirmations", found)
    return found


def _seen_problems(con, data_seed: int) -> dict[str, set[str]]:
    """Problems the DB holds from runs with another data seed: a confirmation with this
    seed (an earlier one, or this one killed and run again) shares its own problems."""
    rows = con.execute(
        "SELECT DISTINCT s.benchmark, s.problem_id FROM samples s LEFT JOIN runs r "
        "USING (run_id) WHERE r.config IS NULL "
        "OR json_extract(r.config, '$.data_seed')::INTEGER IS DISTINCT FROM ?",
        [data_seed],
    ).fetchall()
    seen: dict[str, set[str]] = {}
    for bench, problem_id in rows:
        seen.setdefault(bench, set()).add(problem_id)
    return seen


def _confirmations(
    table: pd.DataFrame, ids: dict, method: str, lam: float, spec: SweepSpec, margin: float,
    interval: str,
) -> pd.DataFrame:  # fmt: skip
    rows = []
    for bench, rows_of in table.groupby("benchmark"):
        by_id = {row["config_id"]: row for _, row in rows_of.iterrows()}
        candidate = by_id[ids["config"]]
        result: dict[str, Any] = {
            "mean": candidate["mean"], "mean_low": candidate["mean_low"],
            "mean_high": candidate["mean_high"], "tokens": candidate["tokens"],
            "interval": candidate["interval"], "label": candidate["label"],
        }  # fmt: skip
        for role in ("direct", "thinking"):
            parent = by_id[ids[role]]
            diff = paired_difference(candidate, parent, margin=margin, interval=interval)
            result[role] = {"mean": parent["mean"], "tokens": parent["tokens"],
                            **difference_columns(diff)}  # fmt: skip
        rows.append(
            dict(
                confirmation_id=uuid.uuid4().hex[:16],
                created_at=datetime.now(UTC).replace(tzinfo=None),
                benchmark=bench, method=method, lam=lam, data_seed=spec.data_seed, k=spec.k,
                n_problems=int(candidate["n_problems"]), config_id=ids["config"],
                direct_config_id=ids["direct"], thinking_config_id=ids["thinking"],
                result=json.dumps(result, allow_nan=False, default=float),
            )
        )  # fmt: skip
    return pd.DataFrame(rows)
