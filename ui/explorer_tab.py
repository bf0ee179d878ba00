"""The Spectrum explorer tab: metrics vs λ, the Pareto plot, accuracy vs tokens per level,
stored samples, votes."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from spectrum.dashboard import REPO, Dashboard
from spectrum.errors import UserError
from ui.common import friendly


@dataclass
class Explorer:
    """What other tabs need to refresh the explorer (the sweep tab does, when it ends)."""

    db: gr.Textbox
    refresh: object
    inputs: list
    outputs: list


# Readable headers and widths: short flags stay narrow, the response gets the room.
SAMPLE_HEADERS = {
    "problem_id": "problem",
    "sample_idx": "sample",
    "correct": "correct",
    "thinks": "thinks",
    "n_tokens": "tokens",
    "response": "response",
}
SAMPLE_WIDTHS = ["13%", "7%", "8%", "8%", "8%", "56%"]


def shown_path(path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def votes_frame(dashboard: Dashboard, db: str) -> pd.DataFrame:
    """The leaderboard: how often each model was picked as best, and its Elo."""
    try:
        standings = dashboard.leaderboard(db)
    except UserError as error:  # the plots do not depend on the votes: warn, go on
        gr.Warning(str(error))
        standings = []
    rows = [
        {
            "model": s.model,
            "votes": s.votes,
            "picked best": s.wins,
            "win rate (95 % CI)": f"{s.win_rate:.2f} ({s.win_low:.2f}–{s.win_high:.2f})",
            "Elo (95 % CI)": f"{s.elo:.0f} ({s.elo_low:.0f}–{s.elo_high:.0f})",
        }
        for s in standings
    ]
    columns = ["model", "votes", "picked best", "win rate (95 % CI)", "Elo (95 % CI)"]
    return pd.DataFrame(rows, columns=columns)


def samples_frame(dashboard: Dashboard, db: str, bench: str, method: str, lam: float):
    return dashboard.samples(db, bench, method, lam).rename(columns=SAMPLE_HEADERS)


def build_explorer_tab(dashboard: Dashboard) -> Explorer:
    with gr.Row(equal_height=True):
        db = gr.Textbox(shown_path(dashboard.db), label="Results database (DuckDB)", scale=3)
        benchmark = gr.Dropdown([], label="Benchmark", scale=1, allow_custom_value=True)
        # Runs decoded differently are never averaged into one point: one decoding at a time.
        decoding = gr.Dropdown(
            [], label="Decoding", scale=1, allow_custom_value=True, elem_id="explorer-decoding"
        )
        load = gr.Button("Load", variant="primary", scale=0, min_width=100, elem_id="explore")
    methods = gr.CheckboxGroup(
        [],
        label="Methods",
        info="Opens on linear and the two best by Pareto area; tick more to compare.",
        elem_id="explorer-methods",
    )
    with gr.Row():
        pareto = gr.Plot(
            label="Accuracy vs tokens (stars: parents, rings: Pareto improvements)",
            show_label=False,
        )
        accuracy = gr.Plot(label="Accuracy vs λ", show_label=False)
    with gr.Row():
        tokens = gr.Plot(label="Token#N vs λ", show_label=False)
        think = gr.Plot(label="Think#R vs λ", show_label=False)
    with gr.Row():
        bleed = gr.Plot(label="Style bleed vs λ", show_label=False, elem_id="style-bleed")
    gr.Markdown("### Accuracy vs tokens per difficulty level")
    with gr.Row():
        level_method = gr.Dropdown([], label="Method", allow_custom_value=True, scale=1)
        by_level = gr.Plot(label="Accuracy vs tokens per level", show_label=False, scale=3)
    with gr.Accordion("What the results show: stages, phase change, improvements, baselines"):
        findings = gr.Markdown(elem_id="findings")
    # Which part of the network carries the thinking (a sweep with λ per module kind).
    with gr.Row(elem_id="heatmaps"):
        heat_accuracy = gr.Plot(label="Accuracy over (λ_attn, λ_mlp)", show_label=False)
        heat_tokens = gr.Plot(label="Token#N over (λ_attn, λ_mlp)", show_label=False)
    gr.Markdown("### Stored responses of one configuration")
    with gr.Row(equal_height=True):
        sample_method = gr.Dropdown([], label="Method", allow_custom_value=True)
        sample_lam = gr.Dropdown([], label="λ", allow_custom_value=True)
    samples = gr.Dataframe(
        wrap=True,
        max_height=420,
        column_widths=SAMPLE_WIDTHS,
        label="Samples",
        elem_id="samples",
    )
    with gr.Accordion("Human-preference leaderboard (votes from the chat tab)", open=False):
        gr.Markdown(
            "Each vote: the picked answer beats the other two; tie and all bad are draws. "
            "Win rate with a Wilson interval; Elo as Chatbot Arena's online Elo (K = 4) with "
            "a bootstrap interval over votes. Merged models are named `method@λ`."
        )
        votes = gr.Dataframe(label="Leaderboard", elem_id="leaderboard")

    @friendly
    def refresh(
        db_text: str,
        chosen_benchmark: str | None,
        chosen_methods: list[str],
        chosen_decoding: str | None = None,
    ):
        everything = dashboard.results(db_text)
        results = everything.only(chosen_decoding)
        bench = chosen_benchmark if chosen_benchmark in results.benchmarks else None
        bench = bench or results.benchmarks[0]
        available = results.methods(bench)
        picked = [m for m in chosen_methods or [] if m in available]
        picked = picked or results.default_methods(bench)
        plots = results.figures(bench, picked)
        lams = results.lams(bench, picked[0])
        return (
            gr.Dropdown(choices=results.benchmarks, value=bench),
            gr.CheckboxGroup(choices=available, value=picked),
            plots["pareto"],
            plots["mean"],
            plots["tokens"],
            plots["think"],
            gr.Dropdown(choices=picked, value=picked[0]),
            gr.Dropdown(choices=lams, value=lams[-1]),
            samples_frame(dashboard, db_text, bench, picked[0], lams[-1]),
            votes_frame(dashboard, db_text),
            gr.Dropdown(choices=available, value=picked[0]),
            level_plot(results, bench, picked[0]),
            results.findings(bench),
            *results.heatmaps(bench),
            gr.Dropdown(choices=everything.decodings, value=results.decoding),
            plots["bleed"],
        )

    def level_plot(results, bench: str, method: str):
        try:
            return results.level_figure(bench, method)
        except UserError:  # a benchmark without levels: nothing to draw, not an error
            return None

    @friendly
    def show_levels(db_text: str, bench: str, method: str, chosen_decoding: str | None):
        return level_plot(dashboard.results(db_text).only(chosen_decoding), bench, method)

    @friendly
    def show_samples(db_text: str, bench: str, method: str, lam: float | None):
        lams = dashboard.results(db_text).lams(bench, method)
        lam = lam if lam in lams else (lams[-1] if lams else None)
        frame = samples_frame(dashboard, db_text, bench, method, lam) if lam is not None else None
        return gr.Dropdown(choices=lams, value=lam), frame

    inputs = [db, benchmark, methods, decoding]
    outputs = [benchmark, methods, pareto, accuracy, tokens, think]
    outputs += [sample_method, sample_lam, samples, votes, level_method, by_level]
    outputs += [findings, heat_accuracy, heat_tokens, decoding, bleed]
    load.click(refresh, inputs, outputs, api_name="explore")
    hidden = dict(api_visibility="undocumented")
    for trigger in (sample_method.input, sample_lam.input):
        trigger(show_samples, [db, benchmark, sample_method, sample_lam], [sample_lam, samples])
    level_method.input(show_levels, [db, benchmark, level_method, decoding], by_level, **hidden)
    benchmark.input(refresh, inputs, outputs, **hidden)
    methods.input(refresh, inputs, outputs, **hidden)
    decoding.input(refresh, inputs, outputs, **hidden)
    return Explorer(db, refresh, inputs, outputs)
