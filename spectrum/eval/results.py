"""Reading a results DB: per-configuration metrics with intervals, paired comparisons,
Pareto fronts, phase changes.

The report, ``spectrum search`` and the dashboard all read results through here. Every
claim that one configuration beats another (``improvements``, ``merges_vs_baselines``) is
a paired test over the problems both answered (``spectrum.eval.metrics.compare``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from spectrum.eval.metrics import Difference, ProblemSamples, compare, summarize
from spectrum.eval.search import Point, phase_from_grid
from spectrum.methods import REGISTRY

METRICS = ("mean", "pass", "vote", "tokens", "think", "truncated")
# Rows that are not merges but cheaper ways to run a model (docs/SCHEMA.md).
BASELINES = ("budget_forcing", "no_thinking")
# Rows of another model run as itself (an intermediate checkpoint...): method ``checkpoint``,
# its name in ``params`` (docs/SCHEMA.md).
CHECKPOINT = "checkpoint"
_SAMPLE_COLUMNS = "correct, extracted, n_tokens, thinks, finished"
# What a row is (column ``kind``): a parent (λ = 0 / 1 of a method that reproduces the
# parents there), an interpolation (0 < λ < 1), a λ-per-module grid point, an endpoint
# (λ = 0 / 1 of a method that does not reproduce the parents, or of a scoped merge:
# neither a parent nor an interpolation), a baseline, or a checkpoint (another model).
KINDS = ("parent", "interpolation", "module_grid", "endpoint", "baseline", "checkpoint")


@dataclass(frozen=True)
class Problems:
    """A configuration's samples per problem (ids sorted): what paired tests pair."""

    ids: tuple[str, ...]
    samples: tuple[ProblemSamples, ...]

    def paired(self, other: Problems) -> tuple[list[ProblemSamples], list[ProblemSamples]]:
        """Both sides' samples on the problems both answered, in the same order."""
        mine = dict(zip(self.ids, self.samples, strict=True))
        theirs = dict(zip(other.ids, other.samples, strict=True))
        common = [i for i in self.ids if i in theirs]
        return [mine[i] for i in common], [theirs[i] for i in common]


def point(con: duckdb.DuckDBPyConnection, config_id: str, benchmark: str) -> Point:
    """Accuracy (Mean@k), Token#N and Think#R of one configuration, from the SQL view."""
    row = con.execute(
        "SELECT accuracy, tokens, think_rate FROM aggregates WHERE config_id = ? AND benchmark = ?",
        [config_id, benchmark],
    ).fetchone()
    if row is None:
        raise KeyError(f"no samples for configuration {config_id} on {benchmark}")
    return Point(*row)


# Columns added after schema 1, and what older databases read as instead.
_OPTIONAL = {
    "module_lams": "NULL AS module_lams",  # schema 2
    "template": "NULL AS template",  # schema 3
    "n_inserted": "0 AS n_inserted",  # schema 3
}


def summaries(
    con: duckdb.DuckDBPyConnection,
    *,
    by_level: bool = False,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    interval: str = "auto",
    config_ids: Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per (benchmark, configuration): every metric with its 90 % interval.

    ``by_level``: problems with a difficulty level count as their own benchmark
    ``<benchmark>:L<level>`` (e.g. ``synthetic:L3``), so harder levels can be compared.
    ``methods``: only these methods' configurations (the bootstrap is the slow part).
    ``interval``: ``auto`` or ``t_runs`` (``spectrum.eval.metrics``).
    ``config_ids``: only these configurations; without it, every configuration but those
    of confirmations (``spectrum.eval.confirm``).
    ``run_ids``: only the samples these runs generated (``runs.run_id``): one run's own
    points, never pooled with another's.

    Columns: benchmark, config_id, method, lam, params, module_lams (JSON or None),
    layers, modules, template (the chat template's parent, None before schema 3), kind
    (``KINDS``), label (method, λ and module λs), n_problems, k, interval (how
    ``mean_low``/``mean_high`` were made), problems (``Problems``, for paired tests),
    and for each metric m in METRICS the columns m, m_low, m_high (Pass@k uses k = the
    smallest sample count).
    """
    present = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    optional = ", ".join(name if name in present else old for name, old in _OPTIONAL.items())
    # Rows without a gold (judged benchmarks) have no accuracy: results_rows reads them.
    where, values = ["correct IS NOT NULL"], []
    if methods is not None:
        where.append("list_contains(?, method)")
        values.append(list(methods))
    if run_ids is not None:
        where.append("list_contains(?, run_id)")
        values.append(list(run_ids))
    if config_ids is not None:
        where.append("list_contains(?, config_id)")
        values.append(list(config_ids))
    else:  # a confirmation's rows are stated as such, not mixed into the sweep's
        values.append(confirmation_ids(con))
        where.append("NOT list_contains(?, config_id)")
    samples = con.execute(
        f"SELECT benchmark, level, config_id, method, lam, params, layers, modules, {optional}, "
        "do_sample, max_new_tokens, "
        f"problem_id, {_SAMPLE_COLUMNS} FROM samples WHERE {' AND '.join(where)} "
        "ORDER BY benchmark, config_id, problem_id, sample_idx",
        values,
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
        grouped = list(config.groupby("problem_id", sort=True))
        problems = [
            ProblemSamples(
                g["correct"].tolist(),
                [None if pd.isna(a) else a for a in g["extracted"]],
                g["n_tokens"].tolist(),
                g["thinks"].tolist(),
                g["finished"].tolist(),
            )
            for _, g in grouped
        ]
        k = min(len(p.correct) for p in problems)
        stats = summarize(problems, pass_k=k, seed=seed, interval=interval)
        first = config.iloc[0]
        row = {name: _cell(first[name]) for name in ("method", "params", "module_lams")}
        row.update(
            benchmark=bench,
            config_id=cid,
            lam=float(first["lam"]),
            layers=_cell(first["layers"]),
            modules=_cell(first["modules"]),
            template=_cell(first["template"]),
            decoding=decoding_label(first["do_sample"], first["max_new_tokens"]),
            n_problems=len(problems),
            k=k,
            interval=stats["mean"].method,
            problems=Problems(tuple(str(i) for i, _ in grouped), tuple(problems)),
        )
        row.update(kind=kind(row), label=label(row))
        for name in METRICS:
            row.update({name: stats[name].value, f"{name}_low": stats[name].low})
            row[f"{name}_high"] = stats[name].high
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).sort_values(["benchmark", "method", "lam"])


SUMMARY_COLUMNS = [
    "benchmark", "config_id", "method", "lam", "params", "module_lams", "layers", "modules",
    "template", "decoding", "kind", "label", "n_problems", "k", "interval", "problems",
    *(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")),
]  # fmt: skip


def confirmation_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Configuration ids of confirmation runs (none in files older than schema 3)."""
    tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
    if "confirmations" not in tables:
        return []
    rows = con.execute(
        "SELECT config_id FROM confirmations UNION SELECT direct_config_id FROM confirmations "
        "UNION SELECT thinking_config_id FROM confirmations"
    ).fetchall()
    return [row[0] for row in rows]


def confirmations(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The stored confirmations (empty in files older than schema 3)."""
    if "confirmations" not in {row[0] for row in con.execute("SHOW TABLES").fetchall()}:
        return pd.DataFrame(columns=["benchmark", "method", "lam", "result"])
    return con.execute("SELECT * FROM confirmations ORDER BY created_at").df()


def _cell(value):
    """A DB value, with SQL NULL (NaN in a frame) as None."""
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def kind(row) -> str:
    """What a configuration is (``KINDS``), from its method, λ, module λs and scope."""
    if row["method"] in BASELINES:
        return "baseline"
    if row["method"] == CHECKPOINT:
        return "checkpoint"
    if row.get("module_lams") is not None:
        return "module_grid"
    if 0.0 < row["lam"] < 1.0:
        return "interpolation"
    method = REGISTRY.get(row["method"])
    whole = row.get("layers") is None and row.get("modules") is None
    return "parent" if method is not None and method.interpolates and whole else "endpoint"


def label(row) -> str:
    """How a configuration is named in every statement: method, λ, module λs, scope, and
    what the baselines' parameters were; a checkpoint by its name."""
    if row["method"] == CHECKPOINT:
        return f"checkpoint {checkpoint_name(row)}"
    text = f"{row['method']} λ={row['lam']:g}"
    if row.get("module_lams") is not None:
        lams = json.loads(row["module_lams"])
        text += " (" + ", ".join(f"λ_{k}={v:g}" for k, v in sorted(lams.items())) + ")"
    if row["method"] == "budget_forcing" and row.get("params"):
        params = json.loads(row["params"])
        text += " " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    if row.get("layers") is not None:
        text += f" layers {row['layers']}"
    if row.get("modules") is not None:
        text += f" modules {row['modules']}"
    if kind(row) == "endpoint":
        text += " (neither a parent nor an interpolation)"
    # Merged models run with the thinking parent's template unless asked otherwise.
    usual = "direct" if row["lam"] == 0 else "thinking"
    if row.get("template") in ("direct", "thinking") and row["template"] != usual:
        text += f" [{row['template']} template]"
    return text


def checkpoint_name(row) -> str:
    """The name a checkpoint row was swept under (``--checkpoint NAME=PATH``)."""
    return str(json.loads(row["params"] or "{}").get("name", "?"))


def parents(table: pd.DataFrame, benchmark: str) -> dict[str, pd.Series]:
    """The parents' rows on a benchmark: λ=0 is the direct model, λ=1 the thinking model
    (taken from ``linear`` when present: every interpolating method gives the same model;
    never from a baseline, which changes how the model decodes)."""
    rows = table[table["benchmark"] == benchmark]
    if "kind" in rows:  # only rows that are the parents' own weights
        rows = rows[rows["kind"] == "parent"]
    else:
        rows = rows[~rows["method"].isin((*BASELINES, CHECKPOINT))]
    rows = pd.concat([rows[rows["method"] == "linear"], rows[rows["method"] != "linear"]])
    found = {}
    for role, lam in (("direct", 0.0), ("thinking", 1.0)):
        match = rows[rows["lam"] == lam]
        if not match.empty:
            found[role] = match.iloc[0]
    return found


def plain_merges(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that are one merge per (method, λ): no baselines, no checkpoints, no λ-per-module
    grids (those are drawn as their own curves and heatmaps)."""
    plain = ~table["method"].isin((*BASELINES, CHECKPOINT))
    if "module_lams" in table:
        plain &= table["module_lams"].isna()
    return table[plain]


def merges(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that are merged models: interpolations and λ-per-module grid points (not the
    parents, not endpoints that are neither, not baselines)."""
    return table[table["kind"].isin(("interpolation", "module_grid"))]


DIFFERENCE_COLUMNS = [
    "n_paired", "acc_diff", "acc_diff_low", "acc_diff_high", "tokens_diff", "tokens_diff_low",
    "tokens_diff_high", "needed_saving", "margin", "diff_interval", "verdict",
]  # fmt: skip


def paired_difference(
    candidate: pd.Series,
    reference: pd.Series,
    *,
    margin: float = 0.0,
    interval: str = "auto",
    seed: int = 0,
) -> Difference:
    """``candidate`` − ``reference`` on the problems both answered, with its verdict."""
    mine, theirs = candidate["problems"].paired(reference["problems"])
    return compare(mine, theirs, margin=margin, interval=interval, seed=seed)


def difference_columns(diff: Difference) -> dict:
    from spectrum.eval.metrics import needed_saving

    return dict(
        n_paired=diff.n_problems,
        acc_diff=diff.accuracy.value,
        acc_diff_low=diff.accuracy.low,
        acc_diff_high=diff.accuracy.high,
        tokens_diff=diff.tokens.value,
        tokens_diff_low=diff.tokens.low,
        tokens_diff_high=diff.tokens.high,
        needed_saving=needed_saving(diff.reference_tokens),
        margin=diff.margin,
        diff_interval=f"{diff.accuracy.method} (accuracy), {diff.tokens.method} (tokens)",
        verdict=diff.verdict,
    )


def _looks_better(candidate: pd.Series, reference: pd.Series, margin: float) -> bool:
    """The paired point estimates say fewer tokens and no accuracy lost beyond ``margin``:
    a claim worth testing (the test itself needs the intervals)."""
    mine, theirs = candidate["problems"].paired(reference["problems"])
    if not mine:
        return False
    accuracy = sum(sum(p.correct) / len(p.correct) for p in mine) - sum(
        sum(p.correct) / len(p.correct) for p in theirs
    )
    tokens = sum(sum(p.n_tokens) / len(p.n_tokens) for p in mine) - sum(
        sum(p.n_tokens) / len(p.n_tokens) for p in theirs
    )
    return tokens < 0 and accuracy / len(mine) >= -margin


VERSUS_COLUMNS = [
    "benchmark", "baseline", "params", "baseline_label", "baseline_mean", "baseline_tokens",
    "merge", "merge_mean", "merge_tokens", *DIFFERENCE_COLUMNS,
]  # fmt: skip


def merges_vs_baselines(
    table: pd.DataFrame, *, margin: float = 0.0, interval: str = "auto", seed: int = 0
) -> pd.DataFrame:
    """For every baseline configuration: does a merge beat it? Among the merges (``merges``)
    whose paired point estimates look better, the one the paired test confirms (else the
    most accurate), with the interval of each difference and the verdict; ``merge`` is
    None when no merge even looks better."""
    found = []
    for baseline, best in _best_merges(table, BASELINES, margin, interval, seed):
        entry = dict(
            benchmark=baseline["benchmark"],
            baseline=baseline["method"],
            params=baseline["params"],
            baseline_label=baseline["label"],
            baseline_mean=baseline["mean"],
            baseline_tokens=baseline["tokens"],
            **_best_columns(best),
        )
        found.append(entry)
    return pd.DataFrame(found, columns=VERSUS_COLUMNS)


CHECKPOINT_VERSUS_COLUMNS = [
    "benchmark", "checkpoint", "checkpoint_label", "checkpoint_mean", "checkpoint_tokens",
    "merge", "merge_mean", "merge_tokens", *DIFFERENCE_COLUMNS,
]  # fmt: skip


def merges_vs_checkpoints(
    table: pd.DataFrame, *, margin: float = 0.0, interval: str = "auto", seed: int = 0
) -> pd.DataFrame:
    """For every checkpoint row: does a merge beat it? The same test as
    ``merges_vs_baselines``: among the merges whose paired point estimates look better
    (fewer tokens, no accuracy lost beyond ``margin``), the one the paired test confirms,
    else the most accurate; ``merge`` is None when no merge even looks better."""
    found = []
    for checkpoint, best in _best_merges(table, (CHECKPOINT,), margin, interval, seed):
        entry = dict(
            benchmark=checkpoint["benchmark"],
            checkpoint=checkpoint_name(checkpoint),
            checkpoint_label=checkpoint["label"],
            checkpoint_mean=checkpoint["mean"],
            checkpoint_tokens=checkpoint["tokens"],
            **_best_columns(best),
        )
        found.append(entry)
    return pd.DataFrame(found, columns=CHECKPOINT_VERSUS_COLUMNS)


def _best_merges(
    table: pd.DataFrame, methods: tuple[str, ...], margin: float, interval: str, seed: int
):
    """(reference row, (merge row, Difference) or None) for every row of ``methods``: the
    merge that beats it by the paired test, else the most accurate that looks better."""
    candidates = merges(table)
    for _, reference in table[table["method"].isin(methods)].iterrows():
        rivals = candidates[candidates["benchmark"] == reference["benchmark"]]
        tested = [
            (row, paired_difference(row, reference, margin=margin, interval=interval, seed=seed))
            for _, row in rivals.iterrows()
            if _looks_better(row, reference, margin)
        ]
        best = max(
            tested, key=lambda t: (t[1].improves, t[0]["mean"], -t[0]["tokens"]), default=None
        )
        yield reference, best


def _best_columns(best) -> dict:
    if best is None:
        return dict(merge=None, merge_mean=None, merge_tokens=None)
    row, diff = best
    return dict(
        merge=row["label"], merge_mean=row["mean"], merge_tokens=row["tokens"],
        **difference_columns(diff),
    )  # fmt: skip


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
    """The merge methods on ``benchmark`` (plain λ sweeps, no baselines), best Pareto area
    first (ties by name)."""
    rows = plain_merges(table[table["benchmark"] == benchmark])
    max_tokens = float(rows["tokens"].max())
    areas = {m: pareto_area(group, max_tokens) for m, group in rows.groupby("method")}
    return sorted(areas, key=lambda m: (-areas[m], m))


def decoding_label(do_sample: Any, max_new_tokens: Any) -> str:
    """How a configuration decoded, as far as runs are told apart: greedy or sampled, and
    the token budget. (Per-model sampling defaults vary the temperature with λ inside one
    sweep, so the temperature is not part of it.) Rows that did not record it say so."""
    mode = "decoding not recorded" if pd.isna(do_sample) else ("sampled" if do_sample else "greedy")
    return mode if pd.isna(max_new_tokens) else f"{mode}, ≤ {int(max_new_tokens)} tokens"


def improvements(
    table: pd.DataFrame, *, margin: float = 0.0, interval: str = "auto", seed: int = 0
) -> pd.DataFrame:
    """Merged configurations (interpolations, λ-per-module grid points), baselines and
    checkpoints whose paired point estimates beat a parent (fewer tokens, no accuracy lost beyond
    ``margin``), each with the paired intervals and its verdict: ``improves`` is True only
    for those the paired test confirms (``spectrum.eval.metrics.compare``)."""
    if "decoding" in table and table["decoding"].nunique() > 1:
        # A merge is compared with the parents decoded the same way, never across runs.
        parts = [
            improvements(group, margin=margin, interval=interval, seed=seed)
            for _, group in table.groupby("decoding", sort=True)
        ]
        return pd.concat(parts, ignore_index=True)
    found = []
    for bench in table["benchmark"].unique():
        rows = table[table["benchmark"] == bench]
        rivals = rows[rows["kind"].isin(("interpolation", "module_grid", "baseline", "checkpoint"))]
        for role, parent in parents(table, bench).items():
            for _, row in rivals.iterrows():
                if not _looks_better(row, parent, margin):
                    continue
                diff = paired_difference(row, parent, margin=margin, interval=interval, seed=seed)
                found.append(
                    {
                        **row.to_dict(),
                        "parent": role,
                        "parent_label": parent["label"],
                        "parent_mean": parent["mean"],
                        "parent_tokens": parent["tokens"],
                        **difference_columns(diff),
                        "improves": diff.improves,
                    }
                )
    columns = [*table.columns, "parent", "parent_label", "parent_mean", "parent_tokens"]
    columns += [c for c in DIFFERENCE_COLUMNS if c not in columns] + ["improves"]
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
