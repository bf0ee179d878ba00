"""Plotly figures of results and weight analyses; the report and the dashboard draw these.

Inputs are the DataFrames of ``spectrum.eval.results.summaries`` / ``improvements`` and of
the weight tables (``spectrum.eval.analysis``), so any caller with a DB can draw them.
"""

from __future__ import annotations

import json
import zlib

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from spectrum.eval.results import BASELINES, CHECKPOINT, checkpoint_name, parents, plain_merges

METRIC_TITLES = {
    "mean": "accuracy (Mean@k)",
    "tokens": "Token#N (generated tokens per response)",
    "think": "Think#R (share of responses with </think>)",
    "vote": "Vote@k",
    "pass": "Pass@k",
    "truncated": "truncation rate",
}
LAM_AXIS = "λ (0 = direct, 1 = thinking)"

# One colour per method, the same in every plot of the explorer, the report and the
# Weights tab. The registered methods get fixed, well-separated colours (in the order
# `spectrum methods` lists them; no grey: grey and black are the parents'); any other
# name a stable one of Dark24's.
_METHOD_COLORS = dict(
    zip(
        (
            "linear", "slerp", "task_arithmetic", "dare", "ties", "emr", "twin", "lore",
            "topk_replace", "topk_diff_avg", "avg_topk_override",
        ),
        [c for c in qualitative.D3 if c != "#7F7F7F"] + ["#1B9E77", "#A6761D"],
        strict=True,
    )
)  # fmt: skip
# The parents and Δ (thinking − direct) are not methods but appear beside them.
_ROLE_COLORS = {"direct": "#5b6470", "thinking": "#111111", "delta": "#6a3d9a"}
# Methods that give the same model (every interpolation at λ = 0 and 1, or linear and
# slerp on near-collinear weights) draw the same curve: dashes and open markers keep the
# one underneath visible.
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_SYMBOLS = ("circle", "square-open", "diamond-open", "triangle-up-open", "x-thin-open")
PARENT_MARKERS = {
    "direct": dict(symbol="diamond", size=15, color=_ROLE_COLORS["direct"]),
    "thinking": dict(symbol="star", size=17, color=_ROLE_COLORS["thinking"]),
}
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0)


def color(name: str) -> str:
    """The colour of a method (or of "direct", "thinking", "delta") in every figure."""
    if name in _METHOD_COLORS:
        return _METHOD_COLORS[name]
    if name in _ROLE_COLORS:
        return _ROLE_COLORS[name]
    return qualitative.Dark24[zlib.crc32(name.encode()) % len(qualitative.Dark24)]


def line_style(i: int) -> dict:
    """Dash and marker of the ``i``-th curve of a plot, so coinciding curves stay apart."""
    return dict(dash=_DASHES[i % len(_DASHES)], symbol=_SYMBOLS[i % len(_SYMBOLS)])


def method_style(name: str) -> dict:
    """A method's colour, dash and marker: the same wherever it is drawn."""
    order = list(_METHOD_COLORS)
    i = order.index(name) if name in order else zlib.crc32(name.encode())
    return dict(color=color(name), **line_style(i))


def _band_color(hex_color: str) -> str:
    red, green, blue = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},0.15)"


def _layout(figure: go.Figure, title: str, x: str, y: str, **extra) -> go.Figure:
    """The shared look: white template, a compact title, the legend in rows below."""
    figure.update_layout(
        title=dict(text=title, font=dict(size=15)),
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        legend=LEGEND_BELOW,
        margin=dict(l=60, r=20, t=50, b=40),
        **extra,
    )
    return figure


def _band(x: list, low: list, high: list, hex_color: str, group: str) -> go.Scatter:
    """A CI band as a fill only: no line and no markers at its edges."""
    return go.Scatter(
        x=x + x[::-1],
        y=high + low[::-1],
        mode="lines",
        fill="toself",
        fillcolor=_band_color(hex_color),
        line=dict(width=0),
        hoverinfo="skip",
        showlegend=False,
        legendgroup=group,
        name=f"{group} 90% CI",
    )


def metric_vs_lam(table: pd.DataFrame, benchmark: str, metric: str = "mean") -> go.Figure:
    """``metric`` against λ, one line per method, its 90 % CI as a shaded band."""
    figure = go.Figure()
    rows = plain_merges(table[table["benchmark"] == benchmark])
    for method, group in rows.groupby("method", sort=True):
        group = group.sort_values("lam")
        style = method_style(method)
        lams, hue = list(group["lam"]), style["color"]
        low, high = list(group[f"{metric}_low"]), list(group[f"{metric}_high"])
        figure.add_trace(_band(lams, low, high, hue, method))
        figure.add_trace(
            go.Scatter(
                x=group["lam"],
                y=group[metric],
                mode="lines+markers",
                name=method,
                legendgroup=method,
                line=dict(color=hue, dash=style["dash"]),
                marker=dict(symbol=style["symbol"], size=8),
            )
        )
    _checkpoint_lines(figure, table[table["benchmark"] == benchmark], metric)
    title = f"{benchmark}: {METRIC_TITLES.get(metric, metric)} vs λ"
    return _layout(figure, title, LAM_AXIS, METRIC_TITLES.get(metric, metric))


def _checkpoint_lines(figure: go.Figure, rows: pd.DataFrame, metric: str) -> None:
    """Each checkpoint's value as a dotted level across λ: where a merge's curve crosses
    it, that merge matches the checkpoint on ``metric``."""
    for _, row in rows[rows["method"] == CHECKPOINT].iterrows():
        name = checkpoint_name(row)
        figure.add_hline(
            y=row[metric], line_dash="dot", line_color=color(name),
            annotation_text=f"checkpoint {name}", annotation_position="top left",
        )  # fmt: skip


def _levels_of(levels: pd.DataFrame, method: str):
    """(level name, rows by λ) of one method's plain merges in ``summaries(by_level=True)``
    rows, whose benchmark names end in ``:L<level>``."""
    rows = plain_merges(levels)
    rows = rows[(rows["method"] == method) & rows["benchmark"].str.contains(":L")]
    order = sorted(rows["benchmark"].unique(), key=lambda b: int(b.rsplit(":L", 1)[1]))
    return [(bench, rows[rows["benchmark"] == bench].sort_values("lam")) for bench in order]


def _level_color(i: int, count: int) -> str:
    # Levels are ordered (harder and harder): a sequential scale says so at a glance.
    return sample_colorscale("Viridis", [0.9 * i / max(count - 1, 1)])[0]


def metric_by_level(levels: pd.DataFrame, method: str, metric: str = "think") -> go.Figure:
    """``metric`` vs λ of one method, a line per difficulty level."""
    figure = go.Figure()
    found = _levels_of(levels, method)
    for i, (bench, group) in enumerate(found):
        style = line_style(i)
        figure.add_trace(
            go.Scatter(
                x=group["lam"],
                y=group[metric],
                mode="lines+markers",
                name=bench,
                line=dict(color=_level_color(i, len(found)), dash=style["dash"]),
                marker=dict(symbol=style["symbol"], size=8),
            )
        )
    title = f"{method}: {METRIC_TITLES.get(metric, metric)} vs λ per level"
    return _layout(figure, title, LAM_AXIS, METRIC_TITLES.get(metric, metric))


def accuracy_vs_tokens_by_level(levels: pd.DataFrame, method: str) -> go.Figure:
    """Accuracy vs Token#N of one method, a curve over λ per difficulty level."""
    figure = go.Figure()
    found = _levels_of(levels, method)
    for i, (bench, group) in enumerate(found):
        style = line_style(i)
        figure.add_trace(
            go.Scatter(
                x=group["tokens"],
                y=group["mean"],
                mode="lines+markers",
                name=bench,
                text=[f"λ={lam:g}" for lam in group["lam"]],
                line=dict(color=_level_color(i, len(found)), dash=style["dash"], width=1.5),
                marker=dict(symbol=style["symbol"], size=8),
            )
        )
    title = f"{method}: accuracy vs Token#N per level (λ along each curve)"
    return _layout(figure, title, "Token#N", METRIC_TITLES["mean"])


def accuracy_vs_tokens(
    table: pd.DataFrame, benchmark: str, improvements: pd.DataFrame | None = None
) -> go.Figure:
    """Accuracy vs Token#N for every configuration; the two parents as their own labelled
    markers, merges that Pareto-improve on a parent by the paired test ringed."""
    figure = go.Figure()
    rows = table[table["benchmark"] == benchmark]
    if "module_lams" in rows:
        rows = rows[rows["module_lams"].isna()]  # λ-per-module grids have their heatmap
    for _, row in rows[rows["method"] == CHECKPOINT].iterrows():
        name = checkpoint_name(row)
        figure.add_trace(
            go.Scatter(
                x=[row["tokens"]],
                y=[row["mean"]],
                mode="markers+text",
                marker=dict(symbol="hexagon", size=14, color=color(name)),
                text=[f"checkpoint {name}"],
                textposition="bottom center",
                name=f"checkpoint {name}",
                error_y=dict(
                    type="data", symmetric=False, array=[row["mean_high"] - row["mean"]],
                    arrayminus=[row["mean"] - row["mean_low"]], thickness=1, width=0,
                ),
            )
        )  # fmt: skip
    rows = rows[rows["method"] != CHECKPOINT]
    for method, group in rows.groupby("method", sort=True):
        # A baseline's points differ by budget, not λ: its curve runs along the tokens.
        baseline = method in BASELINES
        group = group.sort_values(["lam", "tokens"])
        style = method_style(method)
        hue = style["color"]
        figure.add_trace(
            go.Scatter(
                x=group["tokens"],
                y=group["mean"],
                mode="markers+lines",
                name=f"{method} (baseline)" if baseline else method,
                marker=dict(color=hue, symbol=style["symbol"], size=8),
                line=dict(width=1, dash="dash" if baseline else "dot", color=hue),
                text=[_point_label(row) for _, row in group.iterrows()],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=group["mean_high"] - group["mean"],
                    arrayminus=group["mean"] - group["mean_low"],
                    thickness=1,
                    width=0,
                ),
            )
        )
    for role, parent in parents(table, benchmark).items():
        figure.add_trace(
            go.Scatter(
                x=[parent["tokens"]],
                y=[parent["mean"]],
                mode="markers+text",
                marker=PARENT_MARKERS[role],
                text=[f"{role} (λ={parent['lam']:g})"],
                # Parents sit at the plot's edges (fewest and most tokens): label inwards.
                textposition="top left" if role == "thinking" else "top right",
                name=f"{role} parent",
            )
        )
    if improvements is not None and not improvements.empty:
        better = improvements[improvements["benchmark"] == benchmark]
        if "improves" in better:  # only those the paired test holds are ringed
            better = better[better["improves"].astype(bool)]
        figure.add_trace(
            go.Scatter(
                x=better["tokens"],
                y=better["mean"],
                mode="markers",
                marker=dict(symbol="circle-open", size=18, color="crimson", line=dict(width=2)),
                text=[
                    f"{row['label'] if 'label' in row else row['method']} beats {row['parent']}"
                    for _, row in better.iterrows()
                ],
                name="Pareto improvement on a parent",
            )
        )
    return _layout(figure, f"{benchmark}: accuracy vs Token#N", "Token#N", METRIC_TITLES["mean"])


def _point_label(row: pd.Series) -> str:
    if "label" in row:
        return row["label"]
    if row["method"] == "budget_forcing":
        return f"budget {json.loads(row['params'])['budget']} at λ={row['lam']:g}"
    return f"λ={row['lam']:g}"


def relative_distance(stats: pd.DataFrame, scope: str = "layer") -> go.Figure:
    """‖Δ‖/‖θ_D‖ per layer (or per module), in percent, with the overall value as a line."""
    rows = stats[stats["scope"] == scope].sort_values("key")
    overall = stats[stats["scope"] == "overall"]["rel_distance"].iloc[0]
    figure = go.Figure(
        go.Bar(x=rows["key"], y=100 * rows["rel_distance"], name=scope, marker_color=color("delta"))
    )
    figure.add_hline(
        y=100 * overall, line_dash="dash", annotation_text=f"overall {100 * overall:.3f} %"
    )
    return _layout(figure, f"relative distance ‖Δ‖/‖θ_D‖ per {scope}", scope, "%")


def delta_histogram(hist: pd.DataFrame) -> go.Figure:
    centers = (hist["bin_left"] + hist["bin_right"]) / 2
    figure = go.Figure(go.Bar(x=centers, y=hist["count"], name="Δ", marker_color=color("delta")))
    title = "distribution of Δ = θ_T − θ_D (edge bins hold everything beyond ±6 RMS)"
    return _layout(figure, title, "Δ", "count", yaxis_type="log", bargap=0)


def delta_energy(energy: pd.DataFrame) -> go.Figure:
    """Share of ‖Δ‖² held by the top fraction of positions, against the Gaussian reference."""
    figure = go.Figure(
        [
            go.Scatter(
                x=energy["fraction"],
                y=energy["share"],
                name="Δ of this pair",
                line=dict(color=color("delta")),
            ),
            go.Scatter(
                x=energy["fraction"],
                y=energy["reference"],
                name="difference of two i.i.d. Gaussians",
                line=dict(dash="dash", color=color("direct")),
            ),
        ]
    )
    title = "cumulative share of Σ Δ² (positions sorted by |Δ|, largest first)"
    return _layout(figure, title, "fraction of positions", "share of Σ Δ²")


def loss_path(frame: pd.DataFrame) -> go.Figure:
    """Mean per-token NLL against λ, a line per source (``spectrum.eval.loss_path``): a
    high-loss ridge would rise above both ends."""
    from spectrum.eval.loss_path import SOURCE_TITLES, SOURCES

    figure = go.Figure()
    hues = {"text": color("delta"), "direct_answers": color("direct")}
    hues["thinking_answers"] = color("thinking")
    for i, source in enumerate(s for s in SOURCES if s in set(frame["source"])):
        rows = frame[frame["source"] == source].sort_values("lam")
        style = line_style(i)
        figure.add_trace(
            go.Scatter(
                x=rows["lam"],
                y=rows["nll"],
                mode="lines+markers",
                name=f"{SOURCE_TITLES[source]} ({int(rows['n_tokens'].iloc[0])} tokens)",
                line=dict(color=hues[source], dash=style["dash"]),
                marker=dict(symbol=style["symbol"], size=8),
            )
        )
    title = "loss along θ(λ) = (1−λ)·θ_direct + λ·θ_thinking"
    return _layout(figure, title, LAM_AXIS, "mean NLL per token (nats)")


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
