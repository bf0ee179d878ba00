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
from spectrum.eval.loss_path import read_loss_path
from spectrum.eval.metrics import check_interval
from spectrum.eval.results import (
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
    stages,
    summaries,
)
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
        found += baseline_statements(merges_vs_baselines(rows, margin=margin, interval=interval))
        found += checkpoint_statements(rows)
        found += checkpoint_versus_statements(
            merges_vs_checkpoints(rows, margin=margin, interval=interval)
        )
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


def summary_lines(table: pd.DataFrame, better: pd.DataFrame, phases: pd.DataFrame) -> list[str]:
    """The statements as lines of text (the report's summary, the explorer's findings)."""
    return [statement["text"] for statement in statements(table, better, phases)]


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


def baseline_statements(versus: pd.DataFrame) -> list[dict]:
    """Does a merge beat each baseline on accuracy and tokens, by the paired test?"""
    out = []
    for _, row in versus.iterrows():
        head = (
            f"{row['benchmark']}: {row['baseline_label']} ({row['baseline_mean']:.3f}, "
            f"{row['baseline_tokens']:.1f} tok)"
        )
        numbers = {"baseline_mean": row["baseline_mean"], "baseline_tokens": row["baseline_tokens"]}
        if pd.isna(row["merge"]):  # no merge looks better (None in a frame reads back NaN)
            text = f"{head}: no merge beats it on both accuracy and tokens"
            out.append(
                _statement("merge_vs_baseline", row["benchmark"], text, numbers, holds=False)
            )
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
                "merge_vs_baseline", row["benchmark"], text, numbers, merge=row["merge"],
                baseline=row["baseline_label"], interval=row["diff_interval"],
                holds=row["verdict"] == "improvement", selected_in_sample=True,
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


def checkpoint_versus_statements(versus: pd.DataFrame) -> list[dict]:
    """Does a merge beat each checkpoint on accuracy and tokens, by the paired test?"""
    out = []
    for _, row in versus.iterrows():
        head = (
            f"{row['benchmark']}: {row['checkpoint_label']} ({row['checkpoint_mean']:.3f}, "
            f"{row['checkpoint_tokens']:.1f} tok)"
        )
        numbers = dict(checkpoint_mean=row["checkpoint_mean"])
        numbers.update(checkpoint_tokens=row["checkpoint_tokens"])
        extra = dict(checkpoint=row["checkpoint"])
        if pd.isna(row["merge"]):  # no merge looks better
            text = f"{head}: no merge beats it on both accuracy and tokens"
            out.append(
                _statement(
                    "merge_vs_checkpoint", row["benchmark"], text, numbers, holds=False, **extra
                )
            )
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
                "merge_vs_checkpoint", row["benchmark"], text, numbers, merge=row["merge"],
                interval=row["diff_interval"], holds=row["verdict"] == "improvement",
                selected_in_sample=True, **extra,
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
    loss = read_loss_path(con)
    if not loss.empty:
        sections.append(("loss along the path (mode connectivity)", [figures.loss_path(loss)]))
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

    def statements(self) -> list[dict]:
        found = statements(
            self.table, self.better, self.phases, margin=self.margin, interval=self.interval,
            confirmed=self.confirmed,
        )  # fmt: skip
        return found + stage_statements(stages(self.levels)) + loss_statements(self.loss)


def load(con, db: Path, *, margin: float = 0.0, interval: str = "auto") -> Loaded:
    if margin < 0:
        raise UserError(f"--margin must be at least 0, not {margin:g}")
    check_interval(interval)
    table = summaries(con, interval=interval)
    if table.empty:
        raise UserError(f"{db} has no samples; run `spectrum sweep` first")
    better = improvements(table, margin=margin, interval=interval)
    levels = summaries(con, by_level=True, interval=interval)
    levels = levels[levels["benchmark"].str.contains(":L")]
    phases = pd.concat([phase_changes(table), phase_changes(levels)])
    loss = read_loss_path(con)
    return Loaded(table, levels, better, phases, margin, interval, confirmations(con), loss)


def report_statements(db: str | Path, *, margin: float = 0.0, interval: str = "auto") -> list[dict]:
    """Every statement of the report (``statements``), JSON-ready: ``spectrum report --json``."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"no results database at {db}")
    con = store.connect(db, read_only=True)
    try:
        return load(con, db, margin=margin, interval=interval).statements()
    finally:
        con.close()


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
    con = store.connect(db, read_only=True)
    try:
        check_report_target(out, db, force, _recorded_parents(con))
        loaded = load(con, db, margin=margin, interval=interval)
        sections = _sections(con, loaded.table, loaded.better, loaded.levels)
    finally:
        con.close()
    lines = [statement["text"] for statement in loaded.statements()]
    body = [
        f"<h1>Thinking Spectrum results: {html.escape(db.name)}</h1>",
        "<h2>Summary</h2><pre>",
        html.escape("\n".join(lines)),
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
    try:
        rows = con.execute("SELECT direct, thinking, base FROM runs").fetchall()
    except duckdb.Error:  # not a results DB of ours: the report's own reads say so
        return []
    return sorted({source for row in rows for source in row if source})
