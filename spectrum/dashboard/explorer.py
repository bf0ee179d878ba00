"""What the dashboard's explorer, weights and sweep tabs read and run, without Gradio.

Metrics, Pareto improvements and figures come from ``spectrum.eval`` (the same code as
``spectrum report``); this module only opens the DB the page names, filters, and pulls
the stored sample responses of one configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import duckdb
import pandas as pd
import plotly.graph_objects as go

from spectrum.errors import UserError
from spectrum.eval import figures, store
from spectrum.eval.analysis import WeightAnalysis, analyze
from spectrum.eval.report import HEATMAPS, summary_lines
from spectrum.eval.results import improvements, phase_changes, rank_methods, summaries
from spectrum.eval.results_rows import bleed_summaries

EXPLORER_METRICS = ("mean", "tokens", "think")
DEFAULT_METHODS = 3  # what the explorer opens on: more curves than this are a tangle
SAMPLE_COLUMNS = ("problem_id", "sample_idx", "correct", "thinks", "n_tokens", "response")


@dataclass(frozen=True)
class Results:
    """Per-configuration metrics (with CIs) of one DB, and its Pareto improvements."""

    db: Path
    table: pd.DataFrame
    better: pd.DataFrame
    versions: tuple = ()  # the file's (mtime, size): keys the per-level summaries' cache
    decoding: str | None = None  # set by ``only``: every row decoded this way

    @property
    def benchmarks(self) -> list[str]:
        return sorted(self.table["benchmark"].unique())

    @property
    def decodings(self) -> list[str]:
        """How the stored configurations decoded, the most configurations first: two runs
        decoded differently are two curves, never averaged into one point per λ."""
        counts = self.table["decoding"].value_counts()
        return sorted(counts.index, key=lambda name: (-counts[name], name))

    def only(self, decoding: str | None) -> Results:
        """These results restricted to one decoding (default: the most common)."""
        decoding = decoding if decoding in self.decodings else self.decodings[0]
        table = self.table[self.table["decoding"] == decoding]
        better = self.better
        if not better.empty:
            better = better[better["decoding"] == decoding]
        return Results(self.db, table, better, self.versions, decoding)

    def methods(self, benchmark: str) -> list[str]:
        return sorted(self.table.loc[self.table["benchmark"] == benchmark, "method"].unique())

    def findings(self, benchmark: str) -> str:
        """What the results show on ``benchmark``, as the report states it: the parents,
        the phase change and the three stages per method, every Pareto improvement with its
        CI, and whether a merge beats each baseline."""
        rows = self.table[self.table["benchmark"] == benchmark]
        better = (
            self.better[self.better["benchmark"] == benchmark]
            if not self.better.empty
            else self.better
        )
        lines = summary_lines(rows, better, phase_changes(rows))
        return "\n".join(f"- {line.strip()}" for line in lines)

    def heatmaps(self, benchmark: str) -> list[go.Figure | None]:
        """Accuracy and Token#N over (λ_attn, λ_mlp) of the first method swept that way."""
        for method in self.methods(benchmark):
            found = [figures.module_heatmap(self.table, benchmark, method, m) for m in HEATMAPS]
            if found[0] is not None:
                return found
        return [None] * len(HEATMAPS)

    def default_methods(self, benchmark: str) -> list[str]:
        """A readable first view: linear (the reference every paper draws) and the best
        others by Pareto area, ``DEFAULT_METHODS`` in all."""
        ranked = rank_methods(self.table, benchmark)
        first = ["linear"] if "linear" in ranked else []
        return sorted(first + [m for m in ranked if m not in first][: DEFAULT_METHODS - len(first)])

    def lams(self, benchmark: str, method: str) -> list[float]:
        rows = self.table[(self.table["benchmark"] == benchmark) & (self.table["method"] == method)]
        return sorted(float(lam) for lam in rows["lam"].unique())

    def figures(self, benchmark: str, methods: Sequence[str]) -> dict[str, go.Figure]:
        """The Pareto plot and accuracy / Token#N / Think#R / style bleed vs λ for
        ``methods``."""
        if benchmark not in self.benchmarks:
            raise UserError(f"{self.db.name} has no results for benchmark {benchmark!r}")
        chosen = self.table[self.table["method"].isin(methods)]
        if chosen.empty:
            raise UserError("pick at least one method that has results")
        better = self.better
        if not better.empty:
            better = better[better["method"].isin(methods)]
        plots = {"pareto": figures.accuracy_vs_tokens(chosen, benchmark, better)}
        for metric in EXPLORER_METRICS:
            plots[metric] = figures.metric_vs_lam(chosen, benchmark, metric)
        bleed = _bleed_summaries(self.db, self.versions)
        plots["bleed"] = figures.style_bleed_vs_lam(bleed[bleed["method"].isin(methods)], benchmark)
        return plots

    def level_figure(self, benchmark: str, method: str) -> go.Figure:
        """Accuracy vs Token#N of ``method``, one curve over λ per difficulty level."""
        if method not in self.methods(benchmark):
            raise UserError(f"{self.db.name} has no {method} results on {benchmark}")
        levels = _level_summaries(self.db, self.versions, method)
        levels = levels[levels["benchmark"].str.startswith(f"{benchmark}:L")]
        if self.decoding is not None:
            levels = levels[levels["decoding"] == self.decoding]
        if levels.empty:
            raise UserError(f"{benchmark} has no difficulty levels to plot")
        return figures.accuracy_vs_tokens_by_level(levels, method)


def _connect(db: Path) -> duckdb.DuckDBPyConnection:
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    try:
        return store.connect(db, read_only=True)  # waits out a sweep's short transaction
    except duckdb.Error as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"cannot open {db} read-only ({first_line})") from None


def load_results(db: str | Path) -> Results:
    """Summaries (with bootstrap CIs) of ``db``; recomputed only when the file changes."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    wal = db.with_name(db.name + ".wal")
    versions = tuple(
        (path.stat().st_mtime_ns, path.stat().st_size) for path in (db, wal) if path.exists()
    )
    return _load_results(db.resolve(), versions)


@lru_cache(maxsize=32)
def _level_summaries(db: Path, versions: tuple, method: str) -> pd.DataFrame:
    """Per-level summaries of one method (only when the page asks: the bootstrap is slow)."""
    con = _connect(db)
    try:
        return summaries(con, by_level=True, methods=[method])
    finally:
        con.close()


@lru_cache(maxsize=8)
def _bleed_summaries(db: Path, versions: tuple) -> pd.DataFrame:
    """The style-bleed rate per configuration (``results_rows.bleed_summaries``)."""
    con = _connect(db)
    try:
        return bleed_summaries(con)
    finally:
        con.close()


@lru_cache(maxsize=8)
def _load_results(db: Path, versions: tuple) -> Results:
    con = _connect(db)
    try:
        table = summaries(con)
    except duckdb.CatalogException:
        raise UserError(f"{db} is not a results database (no samples table)") from None
    finally:
        con.close()
    if table.empty:
        raise UserError(f"{db} has no samples yet; run a sweep first")
    return Results(db, table, improvements(table), versions)


def sample_responses(
    db: str | Path, benchmark: str, method: str, lam: float, limit: int = 20
) -> pd.DataFrame:
    """Stored responses of one (benchmark, method, λ), first problems first; each with its
    module λs (a λ-per-module grid point is not the plain merge at ``lam``)."""
    con = _connect(Path(db))
    try:
        present = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
        module_lams = "module_lams" if "module_lams" in present else "NULL AS module_lams"
        return con.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)}, {module_lams} FROM samples "
            "WHERE benchmark = ? AND method = ? AND lam = ? "
            "ORDER BY module_lams NULLS FIRST, problem_id, sample_idx LIMIT ?",
            [benchmark, method, float(lam), int(limit)],
        ).df()
    finally:
        con.close()


def weight_figures(analysis: WeightAnalysis) -> dict[str, go.Figure]:
    return {
        "layer": figures.relative_distance(analysis.stats, "layer"),
        "module": figures.relative_distance(analysis.stats, "module"),
        "histogram": figures.delta_histogram(analysis.hist),
        "energy": figures.delta_energy(analysis.energy),
    }


def analyze_pair(direct: str, thinking: str) -> dict[str, go.Figure]:
    """The weight-analysis figures of a pair (streamed, one tensor at a time)."""
    return weight_figures(analyze(direct, thinking, progress=True))
