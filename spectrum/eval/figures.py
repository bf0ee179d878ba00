"""Plotly figures of results and weight analyses; the report and the dashboard draw these.

Inputs are the DataFrames of ``spectrum.eval.results.summaries`` / ``improvements`` and of
the weight tables (``spectrum.eval.analysis``), so any caller with a DB can draw them.
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from spectrum.eval.results import BASELINES, parents, plain_merges

METRIC_TITLES = {
    "mean": "accuracy (Mean@k)",
    "tokens": "Token#N (generated tokens per response)",
    "think": "Think#R (share of responses with </think>)",
    "vote": "Vote@k",
    "pass": "Pass@k",
    "truncated": "truncation rate",
}


def _color(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def _band_color(color: str) -> str:
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},0.18)"


def metric_vs_lam(table: pd.DataFrame, benchmark: str, metric: str = "mean") -> go.Figure:
    """``metric`` against λ, one line per method, its 90 % CI as a shaded band."""
    figure = go.Figure()
    rows = plain_merges(table[table["benchmark"] == benchmark])
    for i, (method, group) in enumerate(rows.groupby("method", sort=True)):
        group = group.sort_values("lam")
        color = _color(i)
        figure.add_trace(
            go.Scatter(
                x=list(group["lam"]) + list(group["lam"])[::-1],
                y=list(group[f"{metric}_high"]) + list(group[f"{metric}_low"])[::-1],
                fill="toself",
                fillcolor=_band_color(color),
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=method,
                name=f"{method} 90% CI",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=group["lam"],
                y=group[metric],
                mode="lines+markers",
                name=method,
                legendgroup=method,
                line=dict(color=color),
            )
        )
    figure.update_layout(
        title=f"{benchmark}: {METRIC_TITLES.get(metric, metric)} vs λ",
        xaxis_title="λ (0 = direct, 1 = thinking)",
        yaxis_title=METRIC_TITLES.get(metric, metric),
        template="plotly_white",
    )
    return figure


def metric_by_level(levels: pd.DataFrame, method: str, metric: str = "think") -> go.Figure:
    """``metric`` vs λ of one method, a line per difficulty level (``summaries(by_level=True)``
    rows, whose benchmark names end in ``:L<level>``)."""
    figure = go.Figure()
    rows = levels[(levels["method"] == method) & levels["benchmark"].str.contains(":L")]
    for i, (bench, group) in enumerate(rows.groupby("benchmark", sort=True)):
        group = group.sort_values("lam")
        figure.add_trace(
            go.Scatter(
                x=group["lam"],
                y=group[metric],
                mode="lines+markers",
                name=bench,
                line=dict(color=_color(i)),
            )
        )
    figure.update_layout(
        title=f"{method}: {METRIC_TITLES.get(metric, metric)} vs λ per level",
        xaxis_title="λ (0 = direct, 1 = thinking)",
        yaxis_title=METRIC_TITLES.get(metric, metric),
        template="plotly_white",
    )
    return figure


def accuracy_vs_tokens(
    table: pd.DataFrame, benchmark: str, improvements: pd.DataFrame | None = None
) -> go.Figure:
    """Accuracy vs Token#N for every configuration; parents as stars, merges that
    Pareto-improve on a parent ringed."""
    figure = go.Figure()
    rows = table[table["benchmark"] == benchmark]
    if "module_lams" in rows:
        rows = rows[rows["module_lams"].isna()]  # λ-per-module grids have their heatmap
    for i, (method, group) in enumerate(rows.groupby("method", sort=True)):
        # A baseline's points differ by budget, not λ: its curve runs along the tokens.
        baseline = method in BASELINES
        group = group.sort_values(["lam", "tokens"])
        figure.add_trace(
            go.Scatter(
                x=group["tokens"],
                y=group["mean"],
                mode="markers+lines",
                name=f"{method} (baseline)" if baseline else method,
                marker=dict(color=_color(i), symbol="diamond" if baseline else "circle"),
                line=dict(width=1, dash="dash" if baseline else "dot"),
                text=[_point_label(row) for _, row in group.iterrows()],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=group["mean_high"] - group["mean"],
                    arrayminus=group["mean"] - group["mean_low"],
                    thickness=1,
                ),
            )
        )
    for role, parent in parents(table, benchmark).items():
        figure.add_trace(
            go.Scatter(
                x=[parent["tokens"]],
                y=[parent["mean"]],
                mode="markers+text",
                marker=dict(symbol="star", size=16, color="black"),
                text=[role],
                textposition="top center",
                name=f"{role} parent",
            )
        )
    if improvements is not None and not improvements.empty:
        better = improvements[improvements["benchmark"] == benchmark]
        figure.add_trace(
            go.Scatter(
                x=better["tokens"],
                y=better["mean"],
                mode="markers",
                marker=dict(symbol="circle-open", size=18, color="crimson", line=dict(width=2)),
                text=[
                    f"{m} λ={lam:g} beats {p}"
                    for m, lam, p in better[["method", "lam", "parent"]].values
                ],
                name="Pareto improvement on a parent",
            )
        )
    figure.update_layout(
        title=f"{benchmark}: accuracy vs Token#N",
        xaxis_title="Token#N",
        yaxis_title="accuracy (Mean@k)",
        template="plotly_white",
    )
    return figure


def _point_label(row: pd.Series) -> str:
    if row["method"] == "budget_forcing":
        return f"budget {json.loads(row['params'])['budget']} at λ={row['lam']:g}"
    return f"λ={row['lam']:g}"


def relative_distance(stats: pd.DataFrame, scope: str = "layer") -> go.Figure:
    """‖Δ‖/‖θ_D‖ per layer (or per module), in percent, with the overall value as a line."""
    rows = stats[stats["scope"] == scope].sort_values("key")
    overall = stats[stats["scope"] == "overall"]["rel_distance"].iloc[0]
    figure = go.Figure(go.Bar(x=rows["key"], y=100 * rows["rel_distance"], name=scope))
    figure.add_hline(
        y=100 * overall, line_dash="dash", annotation_text=f"overall {100 * overall:.3f} %"
    )
    figure.update_layout(
        title=f"relative distance ‖Δ‖/‖θ_D‖ per {scope}",
        xaxis_title=scope,
        yaxis_title="%",
        template="plotly_white",
    )
    return figure


def delta_histogram(hist: pd.DataFrame) -> go.Figure:
    centers = (hist["bin_left"] + hist["bin_right"]) / 2
    figure = go.Figure(go.Bar(x=centers, y=hist["count"], name="Δ"))
    figure.update_layout(
        title="distribution of Δ = θ_T − θ_D (edge bins hold everything beyond ±6 RMS)",
        xaxis_title="Δ",
        yaxis_title="count",
        yaxis_type="log",
        bargap=0,
        template="plotly_white",
    )
    return figure


def delta_energy(energy: pd.DataFrame) -> go.Figure:
    """Share of ‖Δ‖² held by the top fraction of positions, against the Gaussian reference."""
    figure = go.Figure(
        [
            go.Scatter(x=energy["fraction"], y=energy["share"], name="Δ of this pair"),
            go.Scatter(
                x=energy["fraction"],
                y=energy["reference"],
                name="difference of two i.i.d. Gaussians",
                line=dict(dash="dash"),
            ),
        ]
    )
    figure.update_layout(
        title="cumulative share of Σ Δ² (positions sorted by |Δ|, largest first)",
        xaxis_title="fraction of positions",
        yaxis_title="share of Σ Δ²",
        template="plotly_white",
    )
    return figure


def module_lam_grid(table: pd.DataFrame, benchmark: str, method: str) -> pd.DataFrame:
    """Rows of ``method`` swept over λ per module kind, with a column per kind (λ_attn,
    λ_mlp, ...); empty when the DB holds no such sweep."""
    rows = table[
        (table["benchmark"] == benchmark)
        & (table["method"] == method)
        & table["module_lams"].notna()
    ]
    if rows.empty:
        return rows
    kinds = pd.DataFrame([json.loads(value) for value in rows["module_lams"]], index=rows.index)
    return rows.join(kinds.add_prefix("lam_"))


def module_heatmap(
    table: pd.DataFrame, benchmark: str, method: str, metric: str = "mean",
    kinds: tuple[str, str] = ("attn", "mlp"),
) -> go.Figure | None:  # fmt: skip
    """``metric`` over (λ of ``kinds[0]``, λ of ``kinds[1]``): which part of the network
    carries the thinking. None when the DB has no sweep over both kinds."""
    grid = module_lam_grid(table, benchmark, method)
    x_col, y_col = (f"lam_{kind}" for kind in reversed(kinds))
    if grid.empty or not {x_col, y_col} <= set(grid.columns):
        return None
    values = grid.pivot_table(index=y_col, columns=x_col, values=metric, aggfunc="mean")
    figure = go.Figure(
        go.Heatmap(
            x=list(values.columns),
            y=list(values.index),
            z=values.to_numpy(),
            colorscale="Viridis",
            colorbar=dict(title=METRIC_TITLES.get(metric, metric).split(" (")[0]),
            texttemplate="%{z:.2f}" if metric != "tokens" else "%{z:.0f}",
        )
    )
    figure.update_layout(
        title=f"{benchmark}, {method}: {METRIC_TITLES.get(metric, metric)}",
        xaxis_title=f"λ of {kinds[1]}",
        yaxis_title=f"λ of {kinds[0]}",
        template="plotly_white",
    )
    return figure
