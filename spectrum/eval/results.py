"""Reading a results DB: per-configuration metrics with CIs, Pareto fronts, phase changes.

The report, ``spectrum search`` and the dashboard all read results through here.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from spectrum.eval.metrics import ProblemSamples, summarize
from spectrum.eval.search import Point, phase_from_grid

METRICS = ("mean", "pass", "vote", "tokens", "think", "truncated")
# Rows that are not merges but cheaper ways to run a model (docs/SCHEMA.md).
BASELINES = ("budget_forcing", "no_thinking")
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
    con: duckdb.DuckDBPyConnection, *, by_level: bool = False, seed: int = 0
) -> pd.DataFrame:
    """One row per (benchmark, configuration): every metric with its 90 % CI over problems.

    ``by_level``: problems with a difficulty level count as their own benchmark
    ``<benchmark>:L<level>`` (e.g. ``synthetic:L3``), so harder levels can be compared.

    Columns: benchmark, config_id, method, lam, params, module_lams (JSON or None),
    n_problems, k, and for each metric
    m in METRICS the columns m, m_low, m_high (Pass@k uses k = the smallest sample count).
    """
    columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    # Databases written before schema 2 have no module_lams column: every row is plain.
    module_lams = "module_lams" if "module_lams" in columns else "NULL AS module_lams"
    samples = con.execute(
        f"SELECT benchmark, level, config_id, method, lam, params, {module_lams}, problem_id, "
        f"{_SAMPLE_COLUMNS} FROM samples ORDER BY benchmark, config_id, problem_id, sample_idx"
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
            module_lams=first["module_lams"],
            n_problems=len(problems),
            k=k,
        )
        for name in METRICS:
            row.update({name: stats[name].value, f"{name}_low": stats[name].low})
            row[f"{name}_high"] = stats[name].high
        rows.append(row)
    columns = ["benchmark", "config_id", "method", "lam", "params", "module_lams"]
    columns += ["n_problems", "k", *(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high"))]
    return pd.DataFrame(rows, columns=columns).sort_values(["benchmark", "method", "lam"])


def parents(table: pd.DataFrame, benchmark: str) -> dict[str, pd.Series]:
    """The parents' rows on a benchmark: λ=0 is the direct model, λ=1 the thinking model
    (taken from ``linear`` when present: every interpolating method gives the same model;
    never from a baseline, which changes how the model decodes)."""
    rows = table[(table["benchmark"] == benchmark) & ~table["method"].isin(BASELINES)]
    rows = pd.concat([rows[rows["method"] == "linear"], rows[rows["method"] != "linear"]])
    found = {}
    for role, lam in (("direct", 0.0), ("thinking", 1.0)):
        match = rows[rows["lam"] == lam]
        if not match.empty:
            found[role] = match.iloc[0]
    return found


def plain_merges(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that are one merge per (method, λ): no baselines, no λ-per-module grids (those
    are drawn as their own curves and heatmaps)."""
    plain = ~table["method"].isin(BASELINES)
    if "module_lams" in table:
        plain &= table["module_lams"].isna()
    return table[plain]


def _dominates(better: pd.Series, worse: pd.Series) -> bool:
    return (
        better["mean"] >= worse["mean"]
        and better["tokens"] <= worse["tokens"]
        and (better["mean"] > worse["mean"] or better["tokens"] < worse["tokens"])
    )


def _clearly(better: pd.Series, worse: pd.Series) -> bool:
    """The 90 % CIs separate on one axis (and ``better`` is no worse on the other)."""
    return bool(
        better["mean_low"] > worse["mean_high"] or better["tokens_high"] < worse["tokens_low"]
    )


def merges_vs_baselines(table: pd.DataFrame) -> pd.DataFrame:
    """For every baseline configuration, the merge that beats it on both accuracy and
    tokens with the highest accuracy (None when no merge does), and whether the 90 % CIs
    make it clear: does merging beat budget forcing and NoThinking?"""
    found = []
    merges = plain_merges(table)
    for _, baseline in table[table["method"].isin(BASELINES)].iterrows():
        rivals = merges[merges["benchmark"] == baseline["benchmark"]]
        beating = [row for _, row in rivals.iterrows() if _dominates(row, baseline)]
        best = max(beating, key=lambda row: (row["mean"], -row["tokens"]), default=None)
        found.append(
            dict(
                benchmark=baseline["benchmark"],
                baseline=baseline["method"],
                params=baseline["params"],
                baseline_mean=baseline["mean"],
                baseline_tokens=baseline["tokens"],
                merge=None if best is None else f"{best['method']} λ={best['lam']:g}",
                merge_mean=None if best is None else best["mean"],
                merge_tokens=None if best is None else best["tokens"],
                clear=best is not None and _clearly(best, baseline),
            )
        )
    columns = ["benchmark", "baseline", "params", "baseline_mean", "baseline_tokens"]
    return pd.DataFrame(found, columns=[*columns, "merge", "merge_mean", "merge_tokens", "clear"])


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


def improvements(table: pd.DataFrame) -> pd.DataFrame:
    """Merged configurations (0 < λ < 1) and baselines that beat a parent on both accuracy
    and tokens.

    ``clear`` marks those whose 90 % CIs do not overlap the parent's on at least one axis
    and are no worse on the other.
    """
    found = []
    for bench in table["benchmark"].unique():
        rows = table[table["benchmark"] == bench]
        merged = rows[((rows["lam"] > 0) & (rows["lam"] < 1)) | rows["method"].isin(BASELINES)]
        for role, parent in parents(table, bench).items():
            for _, row in merged.iterrows():
                if not _dominates(row, parent):
                    continue
                found.append(
                    {
                        **row.to_dict(),
                        "parent": role,
                        "parent_mean": parent["mean"],
                        "parent_tokens": parent["tokens"],
                        "clear": _clearly(row, parent),
                    }
                )
    columns = [*table.columns, "parent", "parent_mean", "parent_tokens", "clear"]
    return pd.DataFrame(found, columns=columns)


def phase_changes(table: pd.DataFrame, metric: str = "think") -> pd.DataFrame:
    """Per benchmark and method: where ``metric`` crosses half-way, and the grid step around
    it (the phase-change interval)."""
    found = []
    for (bench, method), rows in plain_merges(table).groupby(["benchmark", "method"]):
        rows = rows.sort_values("lam")
        if len(rows) < 2:
            continue
        phase = phase_from_grid(rows["lam"].tolist(), rows[metric].tolist())
        if phase is not None:
            lam, low, high = phase
            found.append(dict(benchmark=bench, method=method, lam=lam, low=low, high=high))
    return pd.DataFrame(found, columns=["benchmark", "method", "lam", "low", "high"])


# Think#R bounds of the interpolation study's three stages: below NO_THINKING the merged
# model answers without an explicit thinking block (stage 1), above THINKING it thinks on
# (nearly) every problem (stage 3); in between thinking switches on (stage 2).
NO_THINKING = 0.1
THINKING = 0.9
STAGE_COLUMNS = [
    "benchmark", "method", "stage", "lam_from", "lam_to", "think_from", "think_to",
    "tokens_from", "tokens_to", "mean_from", "mean_to",
]  # fmt: skip


def stages(
    table: pd.DataFrame, no_thinking: float = NO_THINKING, thinking: float = THINKING
) -> pd.DataFrame:
    """The three stages of the interpolation study, per benchmark and method, from Think#R.

    Stage 1 (Think#R < ``no_thinking``): the direct model's behaviour, answers growing
    longer (Token#N) without explicit thinking; stage 2: thinking switches on, accuracy
    jumps; stage 3 (Think#R ≥ ``thinking``): the thinking model's behaviour, Token#N still
    growing. A stage is the λ range of the grid points that fall in it, in λ order; one
    row per stage reached, with Think#R, Token#N and Mean@k at both ends.
    """
    rows = []
    for (bench, method), grid in plain_merges(table).groupby(["benchmark", "method"]):
        grid = grid.sort_values("lam")
        stage_of = [1 if t < no_thinking else 3 if t >= thinking else 2 for t in grid["think"]]
        # A grid that dips back (noise) keeps its points in λ order: stage numbers are
        # made monotone so every stage is one λ interval.
        monotone = [max(stage_of[: i + 1]) for i in range(len(stage_of))]
        grid = grid.assign(stage=monotone)
        for stage, points in grid.groupby("stage", sort=True):
            first, last = points.iloc[0], points.iloc[-1]
            rows.append(
                dict(
                    benchmark=bench,
                    method=method,
                    stage=int(stage),
                    lam_from=float(first["lam"]),
                    lam_to=float(last["lam"]),
                    think_from=float(first["think"]),
                    think_to=float(last["think"]),
                    tokens_from=float(first["tokens"]),
                    tokens_to=float(last["tokens"]),
                    mean_from=float(first["mean"]),
                    mean_to=float(last["mean"]),
                )
            )
    return pd.DataFrame(rows, columns=STAGE_COLUMNS)
