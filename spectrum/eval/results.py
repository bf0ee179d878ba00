"""Reading a results DB: per-configuration metrics with CIs, Pareto fronts, phase changes.

The report, ``spectrum search`` and the dashboard all read results through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from spectrum.eval.metrics import ProblemSamples, summarize
from spectrum.eval.search import Point, phase_from_grid

METRICS = ("mean", "pass", "vote", "tokens", "think", "truncated")
_SAMPLE_COLUMNS = "correct, extracted, n_tokens, thinks, finished"


def point(con: duckdb.DuckDBPyConnection, config_id: str, benchmark: str) -> Point:
    """Accuracy (Mean@k), Token#N and Think#R of one configuration, from the SQL view."""
    row = con.execute(
        "SELECT accuracy, tokens, think_rate FROM aggregates WHERE config_id = ? AND benchmark = ?",
        [config_id, benchmark],
    ).fetchone()
    if row is None:
        raise KeyError(f"no samples for configuration {config_id} on {benchmark}")
    return Point(*row)


def summaries(
    con: duckdb.DuckDBPyConnection,
    *,
    by_level: bool = False,
    methods: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (benchmark, configuration): every metric with its 90 % CI over problems.

    ``by_level``: problems with a difficulty level count as their own benchmark
    ``<benchmark>:L<level>`` (e.g. ``synthetic:L3``), so harder levels can be compared.
    ``methods``: only these methods' configurations (the bootstrap is the slow part).

    Columns: benchmark, config_id, method, lam, params, n_problems, k, and for each metric
    m in METRICS the columns m, m_low, m_high (Pass@k uses k = the smallest sample count).
    """
    where = "" if methods is None else "WHERE list_contains(?, method) "
    samples = con.execute(
        f"SELECT benchmark, level, config_id, method, lam, params, problem_id, {_SAMPLE_COLUMNS} "
        f"FROM samples {where}ORDER BY benchmark, config_id, problem_id, sample_idx",
        [] if methods is None else [list(methods)],
    ).df()
    if by_level:
        leveled = samples["level"].notna()
        samples.loc[leveled, "benchmark"] = (
            samples.loc[leveled, "benchmark"]
            + ":L"
            + samples.loc[leveled, "level"].astype(int).astype(str)
        )
    rows = []
    for (bench, cid), config in samples.groupby(["benchmark", "config_id"], sort=False):
        problems = [
            ProblemSamples(
                g["correct"].tolist(),
                [None if pd.isna(a) else a for a in g["extracted"]],
                g["n_tokens"].tolist(),
                g["thinks"].tolist(),
                g["finished"].tolist(),
            )
            for _, g in config.groupby("problem_id", sort=False)
        ]
        k = min(len(p.correct) for p in problems)
        stats = summarize(problems, pass_k=k, seed=seed)
        first = config.iloc[0]
        row = dict(
            benchmark=bench,
            config_id=cid,
            method=first["method"],
            lam=float(first["lam"]),
            params=first["params"],
            n_problems=len(problems),
            k=k,
        )
        for name in METRICS:
            row.update({name: stats[name].value, f"{name}_low": stats[name].low})
            row[f"{name}_high"] = stats[name].high
        rows.append(row)
    columns = ["benchmark", "config_id", "method", "lam", "params", "n_problems", "k"]
    columns += [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=columns).sort_values(["benchmark", "method", "lam"])


def parents(table: pd.DataFrame, benchmark: str) -> dict[str, pd.Series]:
    """The parents' rows on a benchmark: λ=0 is the direct model, λ=1 the thinking model
    (taken from ``linear`` when present: every interpolating method gives the same model)."""
    rows = table[table["benchmark"] == benchmark]
    rows = pd.concat([rows[rows["method"] == "linear"], rows[rows["method"] != "linear"]])
    found = {}
    for role, lam in (("direct", 0.0), ("thinking", 1.0)):
        match = rows[rows["lam"] == lam]
        if not match.empty:
            found[role] = match.iloc[0]
    return found


def pareto_front(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows not dominated in (higher Mean@k, fewer tokens)."""
    keep = []
    for _, row in rows.iterrows():
        dominated = (
            (rows["mean"] >= row["mean"])
            & (rows["tokens"] <= row["tokens"])
            & ((rows["mean"] > row["mean"]) | (rows["tokens"] < row["tokens"]))
        ).any()
        keep.append(not dominated)
    return rows[keep].sort_values("tokens")


def pareto_area(rows: pd.DataFrame, max_tokens: float) -> float:
    """Share of the (Token#N ≤ ``max_tokens``) × (accuracy ≤ 1) box that ``rows``' Pareto
    front dominates: 1 is perfect accuracy at no tokens; higher is more accuracy for less."""
    area, below = 0.0, 0.0
    for _, row in pareto_front(rows).iterrows():  # tokens rising, accuracy rising
        area += max(max_tokens - row["tokens"], 0.0) * (row["mean"] - below)
        below = row["mean"]
    return area / max_tokens if max_tokens > 0 else 0.0


def rank_methods(table: pd.DataFrame, benchmark: str) -> list[str]:
    """The methods on ``benchmark``, best Pareto area first (ties by name)."""
    rows = table[table["benchmark"] == benchmark]
    max_tokens = float(rows["tokens"].max())
    areas = {m: pareto_area(group, max_tokens) for m, group in rows.groupby("method")}
    return sorted(areas, key=lambda m: (-areas[m], m))


def improvements(table: pd.DataFrame) -> pd.DataFrame:
    """Merged configurations (0 < λ < 1) that beat a parent on both accuracy and tokens.

    ``clear`` marks those whose 90 % CIs do not overlap the parent's on at least one axis
    and are no worse on the other.
    """
    found = []
    for bench in table["benchmark"].unique():
        merged = table[(table["benchmark"] == bench) & (table["lam"] > 0) & (table["lam"] < 1)]
        for role, parent in parents(table, bench).items():
            better = merged[
                (merged["mean"] >= parent["mean"])
                & (merged["tokens"] <= parent["tokens"])
                & ((merged["mean"] > parent["mean"]) | (merged["tokens"] < parent["tokens"]))
            ]
            for _, row in better.iterrows():
                clear = (
                    row["mean_low"] > parent["mean_high"]
                    or row["tokens_high"] < parent["tokens_low"]
                )
                found.append(
                    {
                        **row.to_dict(),
                        "parent": role,
                        "parent_mean": parent["mean"],
                        "parent_tokens": parent["tokens"],
                        "clear": bool(clear),
                    }
                )
    columns = [*table.columns, "parent", "parent_mean", "parent_tokens", "clear"]
    return pd.DataFrame(found, columns=columns)


def phase_changes(table: pd.DataFrame, metric: str = "think") -> pd.DataFrame:
    """Per benchmark and method: where ``metric`` crosses half-way, and the grid step around
    it (the phase-change interval)."""
    found = []
    for (bench, method), rows in table.groupby(["benchmark", "method"]):
        rows = rows.sort_values("lam")
        if len(rows) < 2:
            continue
        phase = phase_from_grid(rows["lam"].tolist(), rows[metric].tolist())
        if phase is not None:
            lam, low, high = phase
            found.append(dict(benchmark=bench, method=method, lam=lam, low=low, high=high))
    return pd.DataFrame(found, columns=["benchmark", "method", "lam", "low", "high"])
