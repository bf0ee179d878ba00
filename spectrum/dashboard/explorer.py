"""What the dashboard's explorer, weights and sweep tabs read and run, without Gradio.

Metrics, Pareto improvements and figures come from ``spectrum.eval`` (the same code as
``spectrum report``); this module only opens the DB the page names, filters, and pulls
the stored sample responses of one configuration.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import duckdb
import pandas as pd
import plotly.graph_objects as go

from spectrum.dashboard.linked import mark_heatmap, mark_lam_axis, mark_rows, nearest_row
from spectrum.errors import UserError
from spectrum.eval import figures, store
from spectrum.eval.analysis import WeightAnalysis, analyze
from spectrum.eval.findings import CSS as FINDINGS_CSS
from spectrum.eval.findings import findings_html
from spectrum.eval.report import HEATMAPS, statements
from spectrum.eval.results import (
    decoding_label,
    improvements,
    phase_changes,
    rank_methods,
    summaries,
)
from spectrum.eval.results_rows import bleed_summaries
from spectrum.generate.chat import math_markdown, split_reasoning
from spectrum.merge.spec import MergeSpec

EXPLORER_METRICS = ("mean", "tokens", "think")
DEFAULT_METHODS = 3  # what the explorer opens on: more curves than this are a tangle
SAMPLE_COLUMNS = (
    "problem_id", "sample_idx", "level", "prompt", "correct", "thinks", "n_tokens", "gold",
    "extracted", "response",
)  # fmt: skip
ALL_RUNS = "all"  # the run filter's value for every run of the decoding shown
RUN_COLUMNS = ["run_id", "decoding", "label", "n_samples", "n_configs"]


@dataclass(frozen=True)
class Results:
    """Per-configuration metrics (with CIs) of one DB, and its Pareto improvements."""

    db: Path
    table: pd.DataFrame
    better: pd.DataFrame
    versions: tuple = ()  # the file's (mtime, size): keys the per-level summaries' cache
    decoding: str | None = None  # set by ``only``: every row decoded this way
    run: str | None = None  # the one run whose samples these are (None: every run)
    # Every run in the file, a row per (run, decoding): what the run filter offers.
    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RUN_COLUMNS))

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
        return Results(self.db, table, better, self.versions, decoding, self.run, self.runs)

    def run_choices(self, decoding: str | None) -> list[tuple[str, str]]:
        """(label, value) of the run filter: every run of ``decoding`` together, or one
        run alone (newest first)."""
        runs = self.runs[self.runs["decoding"] == decoding]
        every = (f"all {len(runs)} runs of this decoding", ALL_RUNS)
        return [every, *zip(runs["label"], runs["run_id"], strict=True)]

    def methods(self, benchmark: str) -> list[str]:
        return sorted(self.table.loc[self.table["benchmark"] == benchmark, "method"].unique())

    def findings(self, benchmark: str) -> str:
        """What the results show on ``benchmark``, as the report states it (the parents,
        the phase change and the three stages per method, every Pareto improvement with its
        CI, whether a merge beats each baseline): a compact HTML table, details collapsed."""
        rows = self.table[self.table["benchmark"] == benchmark]
        better = (
            self.better[self.better["benchmark"] == benchmark]
            if not self.better.empty
            else self.better
        )
        table = findings_html(statements(rows, better, phase_changes(rows)))
        return f"<style>{FINDINGS_CSS}</style>{table}"

    def heatmaps(self, benchmark: str, chat: MergeSpec | None = None) -> list[go.Figure | None]:
        """Accuracy and Token#N over (λ_attn, λ_mlp) of the first method swept that way
        (a star where the ``chat`` merge sits)."""
        for method in self.methods(benchmark):
            found = [figures.module_heatmap(self.table, benchmark, method, m) for m in HEATMAPS]
            if found[0] is not None:
                return [mark_heatmap(f, chat, ("attn", "mlp")) if chat else f for f in found]
        return [None] * len(HEATMAPS)

    def default_methods(self, benchmark: str) -> list[str]:
        """A readable first view: linear (the reference every paper draws) and the best
        others by Pareto area, ``DEFAULT_METHODS`` in all."""
        # A run of baselines or λ-per-module grids alone has no λ curve to rank.
        ranked = rank_methods(self.table, benchmark) or self.methods(benchmark)
        first = ["linear"] if "linear" in ranked else []
        return sorted(first + [m for m in ranked if m not in first][: DEFAULT_METHODS - len(first)])

    def lams(self, benchmark: str, method: str) -> list[float]:
        rows = self.table[(self.table["benchmark"] == benchmark) & (self.table["method"] == method)]
        return sorted(float(lam) for lam in rows["lam"].unique())

    def figures(
        self, benchmark: str, methods: Sequence[str], chat: MergeSpec | None = None
    ) -> dict[str, go.Figure]:
        """The Pareto plot and accuracy / Token#N / Think#R / style bleed vs λ for ``methods``, each
        marking the ``chat`` merge: a star at its nearest stored point, a line at its λ."""
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
        if chat is not None:
            drawn = self.table[self.table["benchmark"] == benchmark]
            if "module_lams" in drawn:  # the Pareto plot leaves λ-per-module grids out
                drawn = drawn[drawn["module_lams"].isna()]
            nearest = nearest_row(drawn, chat)
            mark_rows(plots["pareto"], [] if nearest is None else [nearest], chat)
            for metric in EXPLORER_METRICS:
                mark_lam_axis(plots[metric], chat)
        bleed = _bleed_summaries(self.db, self.versions)
        # Only the configurations shown: one decoding, never two averaged into a curve.
        shown = bleed["config_id"].isin(self.table["config_id"]) & bleed["method"].isin(methods)
        plots["bleed"] = figures.style_bleed_vs_lam(bleed[shown], benchmark)
        if chat is not None:
            mark_lam_axis(plots["bleed"], chat)
        return plots

    def level_figure(self, benchmark: str, method: str, chat: MergeSpec | None = None) -> go.Figure:
        """Accuracy vs Token#N of ``method``, one curve over λ per difficulty level (a star
        per level at the ``chat`` merge when it is of this method)."""
        if method not in self.methods(benchmark):
            raise UserError(f"{self.db.name} has no {method} results on {benchmark}")
        levels = _level_summaries(self.db, self.versions, method, self.run)
        levels = levels[levels["benchmark"].str.startswith(f"{benchmark}:L")]
        if self.decoding is not None:
            levels = levels[levels["decoding"] == self.decoding]
        if levels.empty:
            raise UserError(f"{benchmark} has no difficulty levels to plot")
        figure = figures.accuracy_vs_tokens_by_level(levels, method)
        if chat is not None:
            per_level = [nearest_row(rows, chat) for _, rows in levels.groupby("benchmark")]
            mark_rows(figure, [row for row in per_level if row is not None], chat)
        return figure


def _connect(db: Path) -> duckdb.DuckDBPyConnection:
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    try:
        return store.connect(db, read_only=True)  # waits out a sweep's short transaction
    except duckdb.Error as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"cannot open {db} read-only ({first_line})") from None


def load_results(db: str | Path, run: str | None = None) -> Results:
    """Summaries (with bootstrap CIs) of ``db``, of every run or of ``run``'s samples
    alone; recomputed only when the file changes."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    wal = db.with_name(db.name + ".wal")
    versions = tuple(
        (path.stat().st_mtime_ns, path.stat().st_size) for path in (db, wal) if path.exists()
    )
    return _load_results(db.resolve(), versions, None if run == ALL_RUNS else run)


@lru_cache(maxsize=32)
def _level_summaries(db: Path, versions: tuple, method: str, run: str | None) -> pd.DataFrame:
    """Per-level summaries of one method (only when the page asks: the bootstrap is slow)."""
    con = _connect(db)
    try:
        runs = None if run is None else [run]
        return summaries(con, by_level=True, methods=[method], run_ids=runs)
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
def _load_results(db: Path, versions: tuple, run: str | None) -> Results:
    con = _connect(db)
    try:
        table = summaries(con, run_ids=None if run is None else [run])
        runs = _runs(con)
    except duckdb.CatalogException:
        raise UserError(f"{db} is not a results database (no samples table)") from None
    finally:
        con.close()
    if run is not None and run not in set(runs["run_id"]):
        raise UserError(f"{db.name} has no samples of run {run!r}")
    if table.empty:
        raise UserError(f"{db} has no samples yet; run a sweep first")
    return Results(db, table, improvements(table), versions, run=run, runs=runs)


def _runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """A row per (run, decoding) that generated samples, newest first, labelled with when,
    what started it (a page sweep or a command) and its methods."""
    tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
    described = (
        "runs.created_at, runs.command"
        if "runs" in tables
        else ("NULL AS created_at, NULL AS command")
    )
    joined = "LEFT JOIN runs USING (run_id)" if "runs" in tables else ""
    found = con.execute(
        f"SELECT run_id, {described}, do_sample, max_new_tokens, count(*) AS n_samples, "
        "count(DISTINCT config_id) AS n_configs, list(DISTINCT method ORDER BY method) AS methods "
        f"FROM samples {joined} "
        "GROUP BY ALL ORDER BY created_at DESC NULLS LAST, run_id"
    ).df()
    found["decoding"] = [
        decoding_label(d, m)
        for d, m in zip(found["do_sample"], found["max_new_tokens"], strict=True)
    ]
    found["label"] = [_run_label(row) for row in found.itertuples()]
    return found[RUN_COLUMNS]


def _run_label(run) -> str:
    """``page sweep · linear · 10 configurations · 2026-12-02 02:31 · 511474d7``: what
    tells runs apart first (a narrow dropdown shows the start)."""
    command = run.command if isinstance(run.command, str) else ""
    words = command.split()
    origin = "page sweep" if command.startswith("spectrum app") else " ".join(words[1:2])
    methods = list(run.methods)
    shown = ", ".join(methods[:3]) + (f" +{len(methods) - 3}" if len(methods) > 3 else "")
    when = "" if pd.isna(run.created_at) else f"{run.created_at:%Y-%m-%d %H:%M}"
    parts = [origin, shown, f"{run.n_configs} configurations", when, str(run.run_id)[:8]]
    return " · ".join(part for part in parts if part)


def sample_responses(
    db: str | Path,
    benchmark: str,
    method: str,
    lam: float,
    limit: int = 20,
    *,
    config_ids: Sequence[str] | None = None,
    run: str | None = None,
) -> pd.DataFrame:
    """Stored responses of one (benchmark, method, λ), first problems first; each with its
    module λs (a λ-per-module grid point is not the plain merge at ``lam``). ``config_ids``
    keeps the configurations the explorer shows (one decoding), ``run`` one run's own."""
    con = _connect(Path(db))
    try:
        present = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
        module_lams = "module_lams" if "module_lams" in present else "NULL AS module_lams"
        where, values = ["benchmark = ?", "method = ?", "lam = ?"], [benchmark, method, float(lam)]
        if config_ids is not None:
            where.append("list_contains(?, config_id)")
            values.append(list(config_ids))
        if run is not None and run != ALL_RUNS:
            where.append("run_id = ?")
            values.append(run)
        return con.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)}, {module_lams} FROM samples "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY module_lams NULLS FIRST, problem_id, sample_idx LIMIT ?",
            [*values, int(limit)],
        ).df()
    finally:
        con.close()


def _markdown_text(text: str) -> str:
    """Model or user text for the page's Markdown: HTML escaped (it is shown, never run),
    bare ``\\boxed{…}`` put in math delimiters so KaTeX renders it."""
    return math_markdown(html.escape(text, quote=False))


def sample_cards(frame: pd.DataFrame) -> str:
    """Stored samples as the page shows them (Markdown with math): per problem its
    question, then each sample's answer rendered, its thinking collapsed, and one line
    saying whether it was graded correct and how many tokens it took."""
    if frame.empty:
        return "*No stored samples for this configuration.*"
    cards = []
    for _, group in frame.groupby(["module_lams", "problem_id"], sort=False, dropna=False):
        first = group.iloc[0]
        level = "" if pd.isna(first["level"]) else f"Level {int(first['level'])} · "
        grid = "" if pd.isna(first["module_lams"]) else f" · module λs {first['module_lams']}"
        lines = [f"**{level}Question{grid}**\n\n> {_markdown_text(first['prompt'] or '')}"]
        for _, sample in group.iterrows():
            reasoning, answer = split_reasoning(sample["response"] or "")
            if reasoning:
                lines.append(
                    f"<details><summary>Thinking ({len(reasoning.split())} words)</summary>"
                    f"\n\n{_markdown_text(reasoning)}\n\n</details>"
                )
            verdict = "✓ correct" if sample["correct"] else "✗ wrong"
            lines.append(
                f"{_markdown_text(answer) or '*(no answer)*'}\n\n<sub>sample "
                f"{int(sample['sample_idx'])} · {verdict} (gold {html.escape(str(sample['gold']))}"
                f") · {int(sample['n_tokens'])} tokens</sub>"
            )
        cards.append("\n\n".join(lines))
    return "\n\n---\n\n".join(cards)


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
