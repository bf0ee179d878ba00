"""One self-contained HTML report of a results DB: figures (plotly JS inlined) and a summary."""

from __future__ import annotations

import html
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import plotly.io as pio

from spectrum.errors import UserError
from spectrum.eval import figures, store
from spectrum.eval.results import (
    improvements,
    merges_vs_baselines,
    parents,
    phase_changes,
    plain_merges,
    stages,
    summaries,
)
from spectrum.weights.output import SHIPPED_ASSETS

HEATMAPS = ("mean", "tokens")  # accuracy and Token#N over (λ_attn, λ_mlp)


def summary_lines(table: pd.DataFrame, better: pd.DataFrame, phases: pd.DataFrame) -> list[str]:
    """What held: per benchmark the parents, the phase change, the improvements, the best
    method at its best λ."""
    lines = []
    for bench in sorted(table["benchmark"].unique()):
        rows = table[table["benchmark"] == bench]
        for role, parent in parents(table, bench).items():
            lines.append(
                f"{bench}: {role} parent (λ={parent['lam']:g}) accuracy {parent['mean']:.3f} "
                f"[{parent['mean_low']:.3f}, {parent['mean_high']:.3f}], "
                f"{parent['tokens']:.1f} tokens, Think#R {parent['think']:.2f}"
            )
        for _, phase in phases[phases["benchmark"].str.split(":").str[0] == bench].iterrows():
            lines.append(
                f"{phase['benchmark']}: {phase['method']} Think#R crosses half-way at "
                f"λ≈{phase['lam']:.3f} "
                f"(steepest step {phase['low']:g}–{phase['high']:g})"
            )
        bench_better = better[better["benchmark"] == bench] if not better.empty else better
        lines.append(
            f"{bench}: {len(bench_better)} merged configurations Pareto-improve on a parent"
        )
        for _, row in bench_better.sort_values("mean", ascending=False).head(8).iterrows():
            lines.append(
                f"  {row['method']} λ={row['lam']:g} beats the {row['parent']} parent: accuracy "
                f"{row['mean']:.3f} [{row['mean_low']:.3f}, {row['mean_high']:.3f}] vs "
                f"{row['parent_mean']:.3f}, tokens {row['tokens']:.1f} vs "
                f"{row['parent_tokens']:.1f}{' (CI-clear)' if row['clear'] else ''}"
            )
        lines += stage_lines(stages(table[table["benchmark"] == bench]))
        lines += baseline_lines(merges_vs_baselines(rows))
        best = (
            rows.sort_values(["mean", "tokens"], ascending=[False, True]).groupby("method").head(1)
        )
        ranking = ", ".join(
            f"{r['method']} {r['mean']:.3f} at λ={r['lam']:g}"
            for _, r in best.sort_values("mean", ascending=False).iterrows()
        )
        lines.append(f"{bench}: best accuracy per method: {ranking}")
    return lines


def stage_lines(found: pd.DataFrame) -> list[str]:
    """The interpolation study's three stages, one line per method and benchmark."""
    lines = []
    for (bench, method), rows in found.groupby(["benchmark", "method"], sort=True):
        parts = [
            f"stage {row.stage} λ {row.lam_from:g}–{row.lam_to:g} (Think#R "
            f"{row.think_from:.2f}→{row.think_to:.2f}, Token#N {row.tokens_from:.0f}→"
            f"{row.tokens_to:.0f})"
            for row in rows.itertuples()
        ]
        lines.append(f"{bench}: {method} " + "; ".join(parts))
    return lines


def baseline_lines(versus: pd.DataFrame) -> list[str]:
    """Does a merge beat each baseline on accuracy and tokens (and clearly, by the CIs)?"""
    lines = []
    for row in versus.itertuples():
        what = row.baseline + (f" {row.params}" if row.baseline == "budget_forcing" else "")
        head = f"{row.benchmark}: {what} ({row.baseline_mean:.3f}, {row.baseline_tokens:.1f} tok)"
        if pd.isna(row.merge):  # no merge beats it (None in a frame reads back as NaN)
            lines.append(f"{head}: no merge beats it on both accuracy and tokens")
            continue
        lines.append(
            f"{head}: beaten by {row.merge} ({row.merge_mean:.3f}, {row.merge_tokens:.1f} tok)"
            + (" — clear by the 90 % CIs" if row.clear else " — within the 90 % CIs")
        )
    return lines


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


def _sections(con, table: pd.DataFrame, better: pd.DataFrame, levels: pd.DataFrame) -> list:
    """(heading, figures) of the report: every method together per benchmark, then each
    method by difficulty level, then the weights."""
    sections = []
    for bench in sorted(table["benchmark"].unique()):
        figs = [figures.metric_vs_lam(table, bench, m) for m in ("mean", "tokens", "think")]
        figs.append(figures.accuracy_vs_tokens(table, bench, better))
        for method in sorted(set(table["method"])):
            heatmaps = [figures.module_heatmap(table, bench, method, m) for m in HEATMAPS]
            figs += [figure for figure in heatmaps if figure is not None]
        sections.append((bench, figs))
    for method in sorted(plain_merges(levels)["method"].unique()):
        figs = [figures.metric_by_level(levels, method, m) for m in ("think", "mean")]
        figs.append(figures.accuracy_vs_tokens_by_level(levels, method))
        sections.append((f"{method} by difficulty level", figs))
    weights = _weight_figures(con)
    if weights:
        sections.append(("weights: Δ = θ_thinking − θ_direct", weights))
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


def build_report(db: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write the report of ``db`` to ``out`` (see ``check_report_target``); return ``out``."""
    db, out = Path(db), Path(out)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    check_report_target(out, db, force)  # the cheap checks, before the DB is opened
    con = store.connect(db, read_only=True)
    try:
        check_report_target(out, db, force, _recorded_parents(con))
        table = summaries(con)
        if table.empty:
            raise UserError(f"{db} has no samples; run `spectrum sweep` first")
        better, phases = improvements(table), phase_changes(table)
        levels = summaries(con, by_level=True)
        levels = levels[levels["benchmark"].str.contains(":L")]
        phases = pd.concat([phases, phase_changes(levels)])
        sections = _sections(con, table, better, levels)
    finally:
        con.close()
    body = [
        f"<h1>Thinking Spectrum results: {html.escape(db.name)}</h1>",
        "<h2>Summary</h2><pre>",
        html.escape("\n".join(summary_lines(table, better, phases) + stage_lines(stages(levels)))),
        "</pre>",
    ]
    first = True  # the first figure carries plotly.js inline, so the file opens offline
    for heading, figs in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for fig in figs:
            body.append(pio.to_html(fig, full_html=False, include_plotlyjs=first))
            first = False
    page = REPORT_START + "</title></head><body>" + "\n".join(body) + "</body></html>"
    _write_readable(out, page)
    return out


def _recorded_parents(con) -> list[str]:
    """Every parent model source the DB's runs name."""
    rows = con.execute("SELECT direct, thinking, base FROM runs").fetchall()
    return sorted({source for row in rows for source in row if source})
