"""One self-contained HTML report of a results DB: figures (plotly JS inlined) and a summary."""

from __future__ import annotations

import html
import json
import math
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import plotly.io as pio

from spectrum.errors import UserError
from spectrum.eval import figures, store
from spectrum.eval.findings import CSS as FINDINGS_CSS
from spectrum.eval.findings import findings_html
from spectrum.eval.loss_path import read_loss_path
from spectrum.eval.metrics import check_interval
from spectrum.eval.results import (
    BASELINES,
    DIFFERENCE_COLUMNS,
    NO_THINKING,
    THINKING,
    confirmations,
    improvements,
    merges_vs_baselines,
    merges_vs_checkpoints,
    parents,
    phase_changes,
    plain_merges,
    rank_methods,
    stages,
    summaries,
)
from spectrum.eval.results_rows import bleed_summaries, judge_summaries, pass_curves
from spectrum.weights.output import SHIPPED_ASSETS

HEATMAPS = ("mean", "tokens")  # accuracy and Token#N over (λ_attn, λ_mlp)


def statements(
    table: pd.DataFrame,
    better: pd.DataFrame,
    phases: pd.DataFrame,
    *,
    margin: float = 0.0,
    interval: str = "auto",
    confirmed: pd.DataFrame | None = None,
) -> list[dict]:
    """Everything the results state, per benchmark: the parents, the phase change, the
    stages, each apparent improvement on a parent and each merge vs baseline, with their
    numbers, how their intervals were made, whether the paired test holds them and
    whether a confirmation on fresh problems backs them (``confirmed``; configurations
    picked from a sweep's own problems are ``selected_in_sample``); then the
    confirmations (``spectrum confirm``) themselves."""
    confirmed = confirmed if confirmed is not None else pd.DataFrame()
    found = []
    for bench in sorted(table["benchmark"].unique()):
        rows = table[table["benchmark"] == bench]
        found += _parent_statements(table, bench)
        found += _phase_statements(phases[phases["benchmark"].str.split(":").str[0] == bench])
        found += stage_statements(stages(rows))
        bench_better = better[better["benchmark"] == bench] if not better.empty else better
        found += _improvement_statements(bench, bench_better, confirmed)
        paired = dict(margin=margin, interval=interval)
        baselines = merges_vs_baselines(rows, **paired)
        found += versus_statements(baselines, "baseline", "baseline_label")
        found += checkpoint_statements(rows)
        checkpoints = merges_vs_checkpoints(rows, **paired)
        found += versus_statements(checkpoints, "checkpoint", "checkpoint")
        found += _endpoint_statements(rows)
    return found + confirmation_statements(confirmed)


def confirmation_statements(confirmed: pd.DataFrame) -> list[dict]:
    """One statement per confirmation and parent: the configuration on fresh problems."""
    out = []
    for _, row in confirmed.iterrows():
        result = json.loads(row["result"])
        for role in ("thinking", "direct"):
            diff = result[role]
            holds = diff["verdict"] == "improvement"
            text = (
                f"{row['benchmark']}: confirmation of {result['label']} on "
                f"{row['n_problems']} fresh problems (data seed {row['data_seed']}, "
                f"k={row['k']}): accuracy {result['mean']:.3f} [{result['mean_low']:.3f}, "
                f"{result['mean_high']:.3f}], {result['tokens']:.1f} tokens vs the {role} "
                f"parent's {diff['mean']:.3f}, {diff['tokens']:.1f}; "
                f"{_difference_text(diff)}: "
                + ("improves on it" if holds else "not distinguishable")
            )
            numbers = {key: result[key] for key in ("mean", "mean_low", "mean_high", "tokens")}
            numbers.update({f"parent_{key}": diff[key] for key in ("mean", "tokens")})
            numbers.update({key: diff[key] for key in _DIFFERENCE_NUMBERS if key in diff})
            out.append(
                _statement(
                    "confirmation", row["benchmark"], text, numbers,
                    configuration=result["label"], parent=role, interval=diff["diff_interval"],
                    holds=holds, confirmed=holds,
                )
            )  # fmt: skip
    return out


def _is_confirmed(confirmed: pd.DataFrame, bench: str, row, role: str) -> bool:
    """A confirmation of the same configuration holds it against the same parent."""
    if confirmed.empty or row["kind"] != "interpolation":
        return False
    same = confirmed[
        (confirmed["benchmark"] == bench)
        & (confirmed["method"] == row["method"])
        & (confirmed["lam"] == row["lam"])
    ]
    return any(json.loads(r)[role]["verdict"] == "improvement" for r in same["result"])


def _statement(kind: str, benchmark: str, text: str, numbers: dict, **extra) -> dict:
    entry = dict(kind=kind, benchmark=benchmark, text=text, numbers=_plain(numbers))
    entry.setdefault("interval", None)
    entry.update(extra)
    entry.setdefault("holds", None)  # a comparison: does the paired test hold it?
    entry.setdefault("confirmed", False)  # backed by a confirmation on fresh problems
    entry.setdefault("selected_in_sample", False)
    return entry


def _plain(numbers: dict) -> dict:
    """JSON-ready values: numpy scalars as Python ones, NaN as None."""
    out = {}
    for key, value in numbers.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = None if isinstance(value, float) and math.isnan(value) else value
    return out


def _parent_statements(table: pd.DataFrame, bench: str) -> list[dict]:
    found = []
    for role, parent in parents(table, bench).items():
        text = (
            f"{bench}: {role} parent ({parent['label']}) accuracy {parent['mean']:.3f} "
            f"[{parent['mean_low']:.3f}, {parent['mean_high']:.3f}] ({parent['interval']}, "
            f"{parent['n_problems']} problems, k={parent['k']}), {parent['tokens']:.1f} tokens, "
            f"Think#R {parent['think']:.2f}"
        )
        numbers = {key: parent[key] for key in ("lam", "mean", "mean_low", "mean_high")}
        numbers.update({key: parent[key] for key in ("tokens", "think", "n_problems", "k")})
        found.append(
            _statement("parent", bench, text, numbers, role=role, interval=parent["interval"])
        )
    return found


def _phase_statements(phases: pd.DataFrame) -> list[dict]:
    return [
        _statement(
            "phase_change",
            phase["benchmark"],
            f"{phase['benchmark']}: {phase['method']} Think#R crosses half-way at "
            f"λ≈{phase['lam']:.3f} (steepest step {phase['low']:g}–{phase['high']:g})",
            {key: phase[key] for key in ("lam", "low", "high")},
            method=phase["method"],
            interval="grid step around the half-way crossing",
        )
        for _, phase in phases.iterrows()
    ]


def stage_statements(found: pd.DataFrame) -> list[dict]:
    """The interpolation study's three stages, one statement per method and benchmark."""
    out = []
    for (bench, method), rows in found.groupby(["benchmark", "method"], sort=True):
        parts = [
            f"stage {row.stage} λ {row.lam_from:g}–{row.lam_to:g} (Think#R "
            f"{row.think_from:.2f}→{row.think_to:.2f}, Token#N {row.tokens_from:.0f}→"
            f"{row.tokens_to:.0f})"
            for row in rows.itertuples()
        ]
        numbers = {
            f"stage{row.stage}": [row.lam_from, row.lam_to, row.think_from, row.think_to]
            for row in rows.itertuples()
        }
        out.append(
            _statement(
                "stages", bench, f"{bench}: {method} " + "; ".join(parts), numbers,
                method=method, interval=f"Think#R thresholds {NO_THINKING:g}/{THINKING:g}",
            )
        )  # fmt: skip
    return out


def _difference_text(row) -> str:
    return (
        f"Δaccuracy {row['acc_diff']:+.3f} [{row['acc_diff_low']:+.3f}, "
        f"{row['acc_diff_high']:+.3f}], Δtokens {row['tokens_diff']:+.1f} "
        f"[{row['tokens_diff_low']:+.1f}, {row['tokens_diff_high']:+.1f}] over "
        f"{int(row['n_paired'])} paired problems ({row['diff_interval']})"
    )


_DIFFERENCE_NUMBERS = [key for key in DIFFERENCE_COLUMNS if key != "diff_interval"]


def _difference_numbers(row) -> dict:
    return {key: row[key] for key in _DIFFERENCE_NUMBERS}


def _improvement_statements(
    bench: str, better: pd.DataFrame, confirmed: pd.DataFrame
) -> list[dict]:
    held = int(better["improves"].sum()) if not better.empty else 0
    out = [
        _statement(
            "improvement_count",
            bench,
            f"{bench}: {held} of {len(better)} apparent Pareto improvements on a parent hold "
            "by the paired test",
            {"holding": held, "apparent": len(better)},
        )
    ]
    for _, row in better.sort_values(["improves", "mean"], ascending=False).iterrows():
        verdict = "beats" if row["improves"] else "is not distinguishable from"
        text = (
            f"  {row['label']} {verdict} the {row['parent']} parent: accuracy "
            f"{row['mean']:.3f} vs {row['parent_mean']:.3f}, tokens {row['tokens']:.1f} vs "
            f"{row['parent_tokens']:.1f}; {_difference_text(row)}"
        )
        numbers = dict(
            mean=row["mean"], tokens=row["tokens"], parent_mean=row["parent_mean"],
            parent_tokens=row["parent_tokens"], **_difference_numbers(row),
        )  # fmt: skip
        out.append(
            _statement(
                "improvement", bench, text, numbers, configuration=row["label"],
                parent=row["parent"], interval=row["diff_interval"], holds=bool(row["improves"]),
                selected_in_sample=True,
                confirmed=_is_confirmed(confirmed, bench, row, row["parent"]),
            )
        )  # fmt: skip
    return out


def versus_statements(versus: pd.DataFrame, other: str, name: str) -> list[dict]:
    """Does a merge beat each ``other`` (a baseline or a checkpoint: the frame's
    ``{other}_label``, ``_mean``, ``_tokens`` columns) on accuracy and tokens, by the paired
    test? Each statement names it by its ``name`` column."""
    out = []
    for _, row in versus.iterrows():
        mean, tokens = row[f"{other}_mean"], row[f"{other}_tokens"]
        head = f"{row['benchmark']}: {row[f'{other}_label']} ({mean:.3f}, {tokens:.1f} tok)"
        numbers = {f"{other}_mean": mean, f"{other}_tokens": tokens}
        named = {other: row[name]}
        if pd.isna(row["merge"]):  # no merge looks better (None in a frame reads back NaN)
            text = f"{head}: no merge beats it on both accuracy and tokens"
            kind = f"merge_vs_{other}"
            out.append(_statement(kind, row["benchmark"], text, numbers, holds=False, **named))
            continue
        verdict = "beaten by" if row["verdict"] == "improvement" else "not distinguishable from"
        text = (
            f"{head}: {verdict} {row['merge']} ({row['merge_mean']:.3f}, "
            f"{row['merge_tokens']:.1f} tok); {_difference_text(row)}"
        )
        numbers.update(merge_mean=row["merge_mean"], merge_tokens=row["merge_tokens"])
        numbers.update(_difference_numbers(row))
        out.append(
            _statement(
                f"merge_vs_{other}", row["benchmark"], text, numbers, merge=row["merge"],
                interval=row["diff_interval"], holds=row["verdict"] == "improvement",
                selected_in_sample=True, **named,
            )
        )  # fmt: skip
    return out


def checkpoint_statements(rows: pd.DataFrame) -> list[dict]:
    """Each checkpoint row (another model on the same problems) with its interval."""
    out = []
    for _, row in rows[rows["kind"] == "checkpoint"].iterrows():
        text = (
            f"{row['benchmark']}: {row['label']} accuracy {row['mean']:.3f} "
            f"[{row['mean_low']:.3f}, {row['mean_high']:.3f}] ({row['interval']}, "
            f"{row['n_problems']} problems, k={row['k']}), {row['tokens']:.1f} tokens, "
            f"Think#R {row['think']:.2f}"
        )
        numbers = {key: row[key] for key in ("mean", "mean_low", "mean_high", "tokens", "think")}
        numbers.update(n_problems=row["n_problems"], k=row["k"])
        out.append(
            _statement(
                "checkpoint", row["benchmark"], text, numbers, configuration=row["label"],
                interval=row["interval"],
            )
        )  # fmt: skip
    return out


def _endpoint_statements(rows: pd.DataFrame) -> list[dict]:
    """Rows at λ = 0 / 1 that are not the parents' weights: said once, kept out of merges."""
    endpoints = rows[rows["kind"] == "endpoint"]
    if endpoints.empty:
        return []
    bench = rows["benchmark"].iloc[0]
    names = ", ".join(sorted(f"{r.method} λ={r.lam:g}" for r in endpoints.itertuples()))
    text = (
        f"{bench}: {names}: neither a parent nor an interpolation; not counted as merges or parents"
    )
    return [_statement("endpoints", bench, text, {"count": len(endpoints)})]


def _weight_figures(con) -> list:
    stats = con.execute("SELECT * FROM weight_stats").df()
    if stats.empty:
        return []
    latest = stats["analysis_id"].iloc[-1]
    hist = con.execute("SELECT * FROM weight_hist WHERE analysis_id = ?", [latest]).df()
    energy = con.execute(
        "SELECT * FROM weight_energy WHERE analysis_id = ? ORDER BY fraction", [latest]
    ).df()
    stats = stats[stats["analysis_id"] == latest]
    return [
        figures.relative_distance(stats, "layer"),
        figures.relative_distance(stats, "module"),
        figures.delta_histogram(hist),
        figures.delta_energy(energy),
    ]


@dataclass(frozen=True)
class Section:
    """One part of the report: its anchor, heading, and what it holds (HTML made from
    figures and tables), with sub-parts listed in the table of contents."""

    anchor: str
    heading: str
    blocks: list  # figures (drawn full width), or (anchor, figure) pairs drawn as a grid
    parts: tuple[tuple[str, str], ...] = ()  # (anchor, name) listed under it


def anchor(*names: str) -> str:
    """An HTML id from names: letters, digits, underscores and dashes only."""
    return "-".join(re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-").lower() for name in names)


def _overview_methods(table: pd.DataFrame, bench: str) -> list[str]:
    """The overview's methods: linear and the two best by Pareto area (the explorer's
    first view), then every baseline; the rest have their own small plots."""
    ranked = rank_methods(table, bench)
    first = ["linear"] if "linear" in ranked else []
    chosen = first + [m for m in ranked if m not in first][: 3 - len(first)]
    present = set(table.loc[table["benchmark"] == bench, "method"])
    return chosen + sorted(present & set(BASELINES))


def loss_statements(loss: pd.DataFrame) -> list[dict]:
    """The ridge of each source of the stored loss path (``spectrum analyze --loss-path``)."""
    from spectrum.eval.loss_path import ridge_sentence, ridges

    if loss.empty:
        return []
    out = []
    for _, row in ridges(loss).iterrows():
        numbers = {key: row[key] for key in ("nll_direct", "nll_thinking", "interior_max")}
        numbers.update(lam_at_max=row["lam_at_max"], ridge=row["ridge"])
        out.append(
            _statement(
                "loss_ridge", "loss_path", ridge_sentence(row), numbers, source=row["source"],
                holds=None if pd.isna(row["ridge"]) else bool(row["ridge"] <= 0),
                interval="none: one fixed text and fixed answers, no sampling",
            )
        )  # fmt: skip
    return out


def _sections(con, table: pd.DataFrame, better: pd.DataFrame, levels: pd.DataFrame) -> list:
    """The report's plot sections: per benchmark an overview (accuracy vs tokens of a few
    methods), one small plot per method and the λ-per-module heatmaps; then one small plot
    per method by difficulty level; then the weights."""
    sections = []
    for bench in sorted(table["benchmark"].unique()):
        shown = table[table["method"].isin(_overview_methods(table, bench))]
        blocks: list = [figures.accuracy_vs_tokens(shown, bench, better)]
        methods = sorted(set(table.loc[table["benchmark"] == bench, "method"]))
        panels = [
            (anchor(bench, "method", method), figures.method_panel(table, bench, method))
            for method in methods
        ]
        panels = [(name, method, fig) for (name, fig), method in zip(panels, methods, strict=True)]
        blocks.append([(name, fig) for name, _, fig in panels if fig is not None])
        heatmaps = [
            (
                anchor(bench, "heatmap", method, metric),
                figures.module_heatmap(table, bench, method, metric),
            )
            for method in methods
            for metric in HEATMAPS
        ]
        blocks.append([(name, fig) for name, fig in heatmaps if fig is not None])
        parts = tuple((name, method) for name, method, fig in panels if fig is not None)
        sections.append(Section(anchor("bench", bench), bench, blocks, parts))
    by_level = [
        (anchor("levels", method), figures.accuracy_vs_tokens_by_level(levels, method))
        for method in sorted(plain_merges(levels)["method"].unique())
    ]
    if by_level:
        heading = "accuracy vs tokens by difficulty level, per method"
        sections.append(Section("levels", heading, [by_level]))
    weights = _weight_figures(con)
    if weights:
        heading = "weights: Δ = θ_thinking − θ_direct"
        panels = [(anchor("weights", str(i)), fig) for i, fig in enumerate(weights)]
        sections.append(Section("weights", heading, [panels]))
    loss = read_loss_path(con)
    if not loss.empty:
        heading = "loss along the path (mode connectivity)"
        sections.append(Section("loss-path", heading, [figures.loss_path(loss)]))
    return sections


BEST_COLUMNS = [
    "benchmark", "decoding", "method", "configuration", "Mean@k (90 % CI)", "Token#N",
    "Think#R", "problems × k",
]  # fmt: skip


def best_configurations(table: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark, decoding and method, the configuration with the highest Mean@k
    (ties: fewer Token#N, then the smaller λ), with its numbers."""
    ordered = table.sort_values(
        ["benchmark", "decoding", "method", "mean", "tokens", "lam"],
        ascending=[True, True, True, False, True, True],
    )
    best = ordered.groupby(["benchmark", "decoding", "method"], sort=True).head(1)
    return pd.DataFrame(
        {
            "benchmark": best["benchmark"],
            "decoding": best["decoding"],
            "method": best["method"],
            "configuration": best["label"],
            "Mean@k (90 % CI)": [
                f"{r.mean:.3f} [{r.mean_low:.3f}, {r.mean_high:.3f}]" for r in best.itertuples()
            ],
            "Token#N": [f"{value:.1f}" for value in best["tokens"]],
            "Think#R": [f"{value:.2f}" for value in best["think"]],
            "problems × k": [f"{r.n_problems} × {r.k}" for r in best.itertuples()],
        },
        columns=BEST_COLUMNS,
    )


def _html_table(frame: pd.DataFrame, css_class: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<table class="{css_class}"><tr>{head}</tr>{body}</table>'


REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 0 auto; padding: 0 16px;
  color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
nav#toc { background: #f6f8fa; border: 1px solid #ddd; border-radius: 6px; padding: 4px 16px; }
nav#toc ol { margin: 4px 0; } nav#toc li { margin: 2px 0; }
table.best { border-collapse: collapse; font-size: 0.92em; }
table.best th, table.best td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 8px; }
.meta { color: #59636e; }
"""


def _figure_html(figure, div_id: str | None, first: bool, height: str) -> str:
    return pio.to_html(
        figure, full_html=False, include_plotlyjs=first, div_id=div_id,
        default_width="100%", default_height=height,
    )  # fmt: skip


def _toc(sections: list[Section]) -> str:
    items = ['<li><a href="#best">Best configurations</a></li>']
    items.append('<li><a href="#findings">Findings</a></li>')
    for section in sections:
        parts = "".join(
            f'<li><a href="#{name}">{html.escape(label)}</a></li>' for name, label in section.parts
        )
        inner = f"<ol>{parts}</ol>" if parts else ""
        items.append(
            f'<li><a href="#{section.anchor}">{html.escape(section.heading)}</a>{inner}</li>'
        )
    return f'<nav id="toc"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def row_sections(loaded: Loaded) -> list[Section]:
    """Pass@k vs k per benchmark; the judge's score and the style-bleed rate vs λ."""
    sections = []
    several = loaded.curves[loaded.curves["k"] >= 2]  # a curve needs two samples or more
    for bench in sorted(several["benchmark"].unique()):
        heading = f"{bench}: Pass@k for every k ≤ n"
        sections.append(
            Section(anchor(bench, "pass"), heading, [figures.pass_at_k_vs_k(loaded.curves, bench)])
        )
    for bench in sorted(loaded.bleed["benchmark"].unique()):
        figs = [figures.style_bleed_vs_lam(loaded.bleed, bench)]
        if bench in set(loaded.judged["benchmark"]):
            figs.insert(0, figures.metric_vs_lam(loaded.judged, bench, "judge"))
        heading = f"{bench}: style bleed" + (" and judge score" if len(figs) > 1 else "")
        sections.append(Section(anchor(bench, "bleed"), heading, figs))
    return sections


REPORT_START = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Thinking Spectrum report"
_WEIGHTS = re.compile(r".*\.(safetensors|bin|pt|pth|msgpack|h5|gguf|duckdb|wal)$")


def check_report_target(out: Path, db: Path, force: bool, parents: Iterable[str] = ()) -> None:
    """Refuse, before any work, a report path that would overwrite what is not a report.

    Never the results DB (or any DuckDB file), the shipped ``assets/``, a model folder or
    a parent the DB records, or a symbolic link; an existing file that is not a report
    only with ``force``; the folder must exist (nothing is created).
    """
    if out.is_symlink():
        raise UserError(f"report path {out} is a symbolic link; name a real file instead")
    if out.is_dir():
        raise UserError(f"report path {out} is a folder; name an .html file inside it")
    if out.exists() and not out.is_file():
        raise UserError(f"report path {out} is not a regular file")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    target = out.resolve()
    if target == db.resolve() or _is_duckdb(out):
        raise UserError(f"report path {out} is a results database; choose another file")
    if target.is_relative_to(SHIPPED_ASSETS):
        raise UserError(f"report path {out} lies inside the shipped assets folder {SHIPPED_ASSETS}")
    if _WEIGHTS.fullmatch(out.name) or _is_model_folder(out.parent):
        raise UserError(f"report path {out} is inside a model folder or names a weight file")
    for source in parents:
        parent = Path(source).expanduser()
        if parent.exists() and target.is_relative_to(parent.resolve()):
            raise UserError(f"report path {out} lies inside the parent model {source}")
    if out.exists() and not force and not _is_report(out):
        raise UserError(
            f"{out} exists and is not a report of this tool",
            cli_hint="pass --force to replace it",
        )


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


def _is_model_folder(folder: Path) -> bool:
    """A checkpoint folder: a config.json beside weight files."""
    return (folder / "config.json").is_file() and any(
        _WEIGHTS.fullmatch(entry.name) for entry in folder.iterdir()
    )


def _is_duckdb(path: Path) -> bool:
    return _head(path, 12)[8:12] == b"DUCK"  # DuckDB's magic follows an 8-byte checksum


def _is_report(path: Path) -> bool:
    return _head(path, len(REPORT_START)) == REPORT_START.encode()


def _write_readable(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` atomically, with a normal file's mode (0666 less umask;
    ``mkstemp`` would make it 0600, unreadable to a web server or a colleague). The temp
    file is this call's own (two reports at once never share one) and never outlives it."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, out)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Loaded:
    """A results DB read once: summaries, per-level summaries, the improvements and the
    phase changes (with the settings of their tests)."""

    table: pd.DataFrame
    levels: pd.DataFrame
    better: pd.DataFrame
    phases: pd.DataFrame
    margin: float
    interval: str
    confirmed: pd.DataFrame
    loss: pd.DataFrame  # the latest loss path (empty: none stored)

    curves: pd.DataFrame  # Pass@1 … Pass@n per configuration
    judged: pd.DataFrame  # judged benchmarks' scores per configuration
    bleed: pd.DataFrame  # style-bleed rate per configuration

    def statements(self) -> list[dict]:
        found = []
        if not self.table.empty:
            found = statements(
                self.table, self.better, self.phases, margin=self.margin,
                interval=self.interval, confirmed=self.confirmed,
            )  # fmt: skip
            found += stage_statements(stages(self.levels))
        found += loss_statements(self.loss)
        return found + row_statements(self.curves, self.judged, self.bleed)


def row_statements(curves: pd.DataFrame, judged: pd.DataFrame, bleed: pd.DataFrame) -> list:
    """Per configuration: Pass@k for every k ≤ n, the judge's score, the style-bleed rate."""
    found = []
    for (bench, _), rows in curves.groupby(["benchmark", "config_id"], sort=True):
        if len(rows) < 2:  # one sample per problem: Pass@1 is Mean@k, stated already
            continue
        values = {f"pass@{k}": v for k, v in zip(rows["k"], rows["pass"], strict=True)}
        text = ", ".join(f"{key} {value:.3f}" for key, value in values.items())
        found.append(_statement("pass_at_k", bench, f"{bench}: {rows['label'].iloc[0]}: {text}",
                                values))  # fmt: skip
    for row in judged.itertuples():
        text = (
            f"{row.benchmark}: {row.label}: judge score {row.judge:.2f} "
            f"(90% CI {row.judge_low:.2f}–{row.judge_high:.2f}) over {row.n_scored} scored "
            f"pieces; {row.n_failed} not scored"
        )
        numbers = dict(score=row.judge, low=row.judge_low, high=row.judge_high,
                       scored=row.n_scored, failed=row.n_failed)  # fmt: skip
        found.append(_statement("judge_score", row.benchmark, text, numbers, interval="bootstrap"))
    for row in bleed.itertuples():
        text = (
            f"{row.benchmark}: {row.label}: style bleed in {row.bleed:.1%} of "
            f"{row.n_samples} responses (90% CI {row.bleed_low:.1%}–{row.bleed_high:.1%})"
        )
        numbers = dict(rate=row.bleed, low=row.bleed_low, high=row.bleed_high,
                       mean_signs=row.bleed_mean, responses=row.n_samples)  # fmt: skip
        found.append(_statement("style_bleed", row.benchmark, text, numbers, interval="wilson"))
    return found


def load(con, db: Path, *, margin: float = 0.0, interval: str = "auto") -> Loaded:
    if margin < 0:
        raise UserError(f"--margin must be at least 0, not {margin:g}")
    check_interval(interval)
    table = summaries(con, interval=interval)
    judged, bleed = judge_summaries(con), bleed_summaries(con)
    if table.empty and judged.empty:
        raise UserError(f"{db} has no samples; run `spectrum sweep` first")
    levels = summaries(con, by_level=True, interval=interval)
    levels = levels[levels["benchmark"].str.contains(":L")]
    if table.empty:  # judged benchmarks only: no accuracy to compare
        better = phases = pd.DataFrame()
    else:
        better = improvements(table, margin=margin, interval=interval)
        phases = pd.concat([phase_changes(table), phase_changes(levels)])
    curves = pass_curves(table)
    loss = read_loss_path(con)
    return Loaded(table, levels, better, phases, margin, interval, confirmations(con), loss,
                  curves, judged, bleed)  # fmt: skip


def report_statements(db: str | Path, *, margin: float = 0.0, interval: str = "auto") -> list[dict]:
    """Every statement of the report (``statements``), JSON-ready: ``spectrum report --json``."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    with store.opened(db, read_only=True) as con:  # a damaged file: one line (``opened``)
        return load(con, db, margin=margin, interval=interval).statements()


def build_report(
    db: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    margin: float = 0.0,
    interval: str = "auto",
) -> Path:
    """Write the report of ``db`` to ``out`` (see ``check_report_target``); return ``out``."""
    db, out = Path(db), Path(out)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    check_report_target(out, db, force)  # the cheap checks, before the DB is opened
    with store.opened(db, read_only=True) as con:  # a damaged file: one line (``opened``)
        check_report_target(out, db, force, _recorded_parents(con))
        loaded = load(con, db, margin=margin, interval=interval)
        sections = _sections(con, loaded.table, loaded.better, loaded.levels)
        sections += row_sections(loaded)
    body = [
        f"<h1>Thinking Spectrum results: {html.escape(db.name)}</h1>",
        f'<p class="meta">{len(loaded.table)} configurations on '
        f"{', '.join(sorted(loaded.table['benchmark'].unique()))}; decoded "
        f"{'; '.join(sorted(loaded.table['decoding'].unique()))}.</p>",
        _toc(sections),
        '<section id="best"><h2>Best configurations</h2>',
        "<p>Per method, its most accurate configuration (ties: fewer tokens), picked on the "
        "sweep's own problems: a confirmation on fresh ones says whether it holds.</p>",
        _html_table(best_configurations(loaded.table), "best"),
        '</section><section id="findings"><h2>Findings</h2>',
        findings_html(loaded.statements()),
        "</section>",
    ]
    first = True  # the first figure carries plotly.js inline, so the file opens offline
    for section in sections:
        body.append(f'<section id="{section.anchor}"><h2>{html.escape(section.heading)}</h2>')
        for block in section.blocks:
            if isinstance(block, list) and block:  # small plots side by side
                body.append('<div class="panels">')
                for name, fig in block:
                    drawn = _figure_html(fig, f"plot-{name}", first, "300px")
                    body.append(f'<div id="{name}">{drawn}</div>')
                    first = False
                body.append("</div>")
            elif not isinstance(block, list):
                body.append(_figure_html(block, None, first, "440px"))
                first = False
        body.append("</section>")
    head = f"</title><style>{REPORT_CSS}{FINDINGS_CSS}</style></head><body>"
    page = REPORT_START + head + "\n".join(body) + "</body></html>"
    _write_readable(out, page)
    return out


def _recorded_parents(con) -> list[str]:
    """Every parent model source the DB's runs name."""
    try:
        rows = con.execute("SELECT direct, thinking, base FROM runs").fetchall()
    except duckdb.Error:  # not a results DB of ours: the report's own reads say so
        return []
    return sorted({source for row in rows for source in row if source})
