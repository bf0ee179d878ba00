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
from spectrum.merge.scope import MODULE_KINDS

METRIC_TITLES = {
    "mean": "accuracy (Mean@k)",
    "tokens": "Token#N (generated tokens per response)",
    "think": "Think#R (share of responses with </think>)",
    "vote": "Vote@k",
    "pass": "Pass@k",
    "truncated": "truncation rate",
    "judge": "judge score (0–20, negative criteria inverted)",
    "bleed": "style bleed (share of responses with a sign)",
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


def configuration(row: pd.Series) -> str:
    """The merge a plotted row is, as JSON (method, λ and, where set, parameters, λ per
    module kind, layers, modules): each point carries it, so a page can load it on click."""
    data = {"method": row["method"], "lam": float(row["lam"])}
    for key in ("params", "module_lams"):
        value = row.get(key)
        if isinstance(value, str) and json.loads(value):
            data[key] = json.loads(value)
    for key in ("layers", "modules"):
        if isinstance(row.get(key), str):
            data[key] = row[key]
    return json.dumps(data, sort_keys=True)


def _configurations(rows: pd.DataFrame) -> list[str]:
    return [configuration(row) for _, row in rows.iterrows()]


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
                customdata=_configurations(group),
            )
        )
    _checkpoint_lines(figure, table[table["benchmark"] == benchmark], metric)
    title = f"{benchmark}: {METRIC_TITLES.get(metric, metric)} vs λ"
    return _layout(figure, title, LAM_AXIS, METRIC_TITLES.get(metric, metric))


def style_bleed_vs_lam(bleed: pd.DataFrame, benchmark: str) -> go.Figure:
    """The style-bleed rate against λ per method (``results_rows.bleed_summaries``)."""
    return metric_vs_lam(bleed, benchmark, "bleed")


def pass_at_k_vs_k(curves: pd.DataFrame, benchmark: str) -> go.Figure:
    """Pass@k against k = 1 … n, one line per configuration (``results_rows.pass_curves``),
    coloured by method."""
    figure = go.Figure()
    rows = curves[curves["benchmark"] == benchmark]
    for (method, _, name), group in rows.groupby(["method", "lam", "label"], sort=True):
        style = method_style(method)
        figure.add_trace(
            go.Scatter(
                x=group["k"], y=group["pass"], mode="lines+markers", name=name,
                legendgroup=method, line=dict(color=style["color"], dash=style["dash"]),
                marker=dict(symbol=style["symbol"], size=6),
            )
        )  # fmt: skip
    return _layout(figure, f"{benchmark}: Pass@k vs k", "k (samples drawn)", "Pass@k")


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
                customdata=_configurations(group),
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
                customdata=None if baseline else _configurations(group),
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
                customdata=[configuration(parent)],
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
    grid, rest = _one_slice(grid, kinds)
    values = grid.pivot_table(index=y_col, columns=x_col, values=metric, aggfunc="mean")
    merges = grid.assign(merge=_configurations(grid)).pivot_table(
        index=y_col, columns=x_col, values="merge", aggfunc="first"
    )
    figure = go.Figure(
        go.Heatmap(
            x=list(values.columns),
            y=list(values.index),
            z=values.to_numpy(),
            customdata=merges.reindex_like(values).fillna("").to_numpy().tolist(),
            colorscale="Viridis",
            colorbar=dict(title=METRIC_TITLES.get(metric, metric).split(" (")[0]),
            texttemplate="%{z:.2f}" if metric != "tokens" else "%{z:.0f}",
        )
    )
    figure.update_layout(
        title=dict(
            text=f"{benchmark}, {method}: {METRIC_TITLES.get(metric, metric)}<br><sup>{rest}</sup>",
            font=dict(size=15),
        ),
        xaxis_title=f"λ of {kinds[1]}",
        yaxis_title=f"λ of {kinds[0]}",
        template="plotly_white",
    )
    return figure


def _one_slice(grid: pd.DataFrame, kinds: tuple[str, str]) -> tuple[pd.DataFrame, str]:
    """The grid points at one setting of every other kind's λ (the most swept one), and
    the caption saying what it is: pivoting several settings would average different
    merges into one cell."""
    named = [c for c in grid.columns if c.startswith("lam_") and c[4:] not in kinds]
    settings = grid.groupby(["lam", *named]).size()
    chosen = settings.idxmax()
    chosen = chosen if isinstance(chosen, tuple) else (chosen,)
    keep = pd.Series(True, index=grid.index)
    for column, value in zip(["lam", *named], chosen, strict=True):
        keep &= grid[column] == value
    at = dict(zip(["lam", *named], chosen, strict=True))
    others = [kind for kind in MODULE_KINDS if kind not in kinds and f"lam_{kind}" not in named]
    parts = [f"{column[4:]} at λ={value:g}" for column, value in at.items() if column != "lam"]
    if others:
        parts.append(f"{', '.join(others)} at λ={at['lam']:g}")
    caption = f"λ_{kinds[0]} × λ_{kinds[1]}; other kinds: " + "; ".join(parts)
    if len(settings) > 1:
        caption += f" (1 of {len(settings)} settings swept)"
    return grid[keep], caption


def method_panel(table: pd.DataFrame, benchmark: str, method: str) -> go.Figure | None:
    """One method on its own, small: accuracy (with its 90 % CI) and Think#R on the left
    axis, Token#N on the right, against λ (a baseline's against its tokens, since its
    points differ by budget, not λ). None when the method has no such rows."""
    rows = table[(table["benchmark"] == benchmark) & (table["method"] == method)]
    baseline = method in BASELINES
    rows = rows if baseline else plain_merges(rows)
    if rows.empty:
        return None
    x_col = "tokens" if baseline else "lam"
    rows = rows.sort_values([x_col, "lam"])
    x = list(rows[x_col])
    hue = color(method)
    figure = go.Figure()
    figure.add_trace(_band(x, list(rows["mean_low"]), list(rows["mean_high"]), hue, "accuracy"))
    lines = (
        ("accuracy", "mean", dict(color=hue), "y"),
        ("Think#R", "think", dict(color=hue, dash="dot"), "y"),
        ("Token#N", "tokens", dict(color=_ROLE_COLORS["direct"], dash="dash", width=1), "y2"),
    )
    for name, column, line, axis in lines:
        if baseline and column == "tokens":
            continue  # the x axis already is Token#N
        figure.add_trace(
            go.Scatter(x=x, y=rows[column], name=name, mode="lines+markers", line=line,
                       marker=dict(size=5), yaxis=axis)
        )  # fmt: skip
    title = f"{method}" + (" (baseline)" if baseline else "")
    _layout(figure, title, "Token#N" if baseline else LAM_AXIS, "accuracy, Think#R")
    figure.update_layout(
        height=300, margin=dict(l=50, r=50, t=40, b=40),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right",
                    font=dict(size=10)),
    )  # fmt: skip
    figure.update_layout(yaxis_range=[-0.02, 1.02])
    if not baseline:
        figure.update_layout(
            yaxis2=dict(title="Token#N", overlaying="y", side="right", showgrid=False)
        )
    return figure
