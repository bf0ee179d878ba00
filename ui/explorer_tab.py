"""The Spectrum explorer tab: metrics vs λ, the Pareto plot, accuracy vs tokens per level,
stored samples, votes."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from spectrum.dashboard import ALL_RUNS, REPO, Dashboard, MergeSpec, sample_cards
from spectrum.errors import UserError
from ui.chat_tab import LATEX_DELIMITERS
from ui.common import friendly


@dataclass
class Explorer:
    """What other tabs need to refresh the explorer (the sweep tab does, when it ends) and
    to mark the chat's merge on its plots (``mark``, with ``mark_inputs``/``mark_outputs``)."""

    db: gr.Textbox
    refresh: object
    inputs: list
    outputs: list
    mark: object
    mark_inputs: list
    mark_outputs: list


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


def samples_view(
    dashboard: Dashboard, db: str, bench: str, method: str, lam: float, decoding: str, run: str
) -> str:
    """The question and rendered answers of one configuration as it is shown (its decoding,
    its run)."""
    frame = dashboard.samples(db, bench, method, lam, decoding=decoding, run=run)
    return sample_cards(frame)


def build_explorer_tab(dashboard: Dashboard, chat_spec: gr.State) -> Explorer:
    """The tab; ``chat_spec`` is the chat's loaded merge, marked on every plot."""
    with gr.Row(equal_height=True):
        db = gr.Textbox(shown_path(dashboard.db), label="Results database (DuckDB)", scale=3)
        benchmark = gr.Dropdown([], label="Benchmark", scale=1, allow_custom_value=True)
        # Runs decoded differently are never averaged into one point: one decoding at a time.
        decoding = gr.Dropdown(
            [], label="Decoding", scale=1, allow_custom_value=True, elem_id="explorer-decoding"
        )
        # One run alone, or every run of the decoding (the same configuration pooled).
        run = gr.Dropdown([], label="Run", scale=2, allow_custom_value=True, elem_id="explorer-run")
        load = gr.Button("Load", variant="primary", scale=0, min_width=100, elem_id="explore")
    methods = gr.CheckboxGroup(
        [],
        label="Methods",
        info="Opens on linear and the two best by Pareto area; tick more to compare.",
        elem_id="explorer-methods",
    )
    # The chat's merge is marked on every plot; a click on a point loads its merge there.
    chat_line = gr.Markdown(elem_id="explorer-chat")
    linked = dict(show_label=False, elem_classes=["linked-plot"])
    with gr.Row():
        pareto = gr.Plot(
            label="Accuracy vs tokens (stars: parents, rings: Pareto improvements)",
            elem_id="plot-pareto",
            **linked,
        )
        accuracy = gr.Plot(label="Accuracy vs λ", elem_id="plot-accuracy", **linked)
    with gr.Row():
        tokens = gr.Plot(label="Token#N vs λ", elem_id="plot-tokens", **linked)
        think = gr.Plot(label="Think#R vs λ", elem_id="plot-think", **linked)
    with gr.Row():
        bleed = gr.Plot(label="Style bleed vs λ", elem_id="style-bleed", **linked)
    gr.Markdown("### Accuracy vs tokens per difficulty level")
    with gr.Row():
        level_method = gr.Dropdown([], label="Method", allow_custom_value=True, scale=1)
        by_level = gr.Plot(
            label="Accuracy vs tokens per level", scale=3, elem_id="plot-levels", **linked
        )
    with gr.Accordion("What the results show: stages, phase change, improvements, baselines"):
        findings = gr.HTML(elem_id="findings")
    # Which part of the network carries the thinking (a sweep with λ per module kind).
    with gr.Row(elem_id="heatmaps"):
        heat_accuracy = gr.Plot(label="Accuracy over (λ_attn, λ_mlp)", **linked)
        heat_tokens = gr.Plot(label="Token#N over (λ_attn, λ_mlp)", **linked)
    gr.Markdown("### Stored responses of one configuration")
    with gr.Row(equal_height=True):
        sample_method = gr.Dropdown([], label="Method", allow_custom_value=True)
        sample_lam = gr.Dropdown([], label="λ", allow_custom_value=True)
    samples = gr.Markdown(
        latex_delimiters=LATEX_DELIMITERS, max_height=520, container=True, elem_id="samples"
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
        chosen_run: str | None = None,
        chat: MergeSpec | None = None,
    ):
        everything = dashboard.results(db_text)
        decoding = everything.only(chosen_decoding).decoding
        runs = everything.run_choices(decoding)
        shown_run = chosen_run if chosen_run in [value for _, value in runs] else ALL_RUNS
        results = dashboard.results(db_text, shown_run).only(decoding)
        bench = chosen_benchmark if chosen_benchmark in results.benchmarks else None
        bench = bench or results.benchmarks[0]
        available = results.methods(bench)
        picked = [m for m in chosen_methods or [] if m in available]
        picked = picked or results.default_methods(bench)
        plots = results.figures(bench, picked, chat)
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
            samples_view(dashboard, db_text, bench, picked[0], lams[-1], decoding, shown_run),
            votes_frame(dashboard, db_text),
            gr.Dropdown(choices=available, value=picked[0]),
            level_plot(results, bench, picked[0], chat),
            results.findings(bench),
            *results.heatmaps(bench, chat),
            gr.Dropdown(choices=everything.decodings, value=results.decoding),
            gr.Dropdown(choices=runs, value=shown_run),
            chat_note(chat),
            plots["bleed"],
        )

    def level_plot(results, bench: str, method: str, chat: MergeSpec | None):
        try:
            return results.level_figure(bench, method, chat)
        except UserError:  # a benchmark without levels: nothing to draw, not an error
            return None

    @friendly
    def show_levels(
        db_text: str,
        bench: str,
        method: str,
        chosen_decoding: str | None,
        run: str,
        chat: MergeSpec,
    ):
        results = dashboard.results(db_text, run).only(chosen_decoding)
        return level_plot(results, bench, method, chat)

    def mark(
        db_text: str,
        bench: str | None,
        chosen_methods: list[str],
        chosen_decoding: str | None,
        run: str | None,
        method: str | None,
        chat: MergeSpec,
    ):
        """The plots again with the chat's new merge marked (nothing to do before the
        explorer has drawn anything)."""
        if not bench or not chosen_methods:
            return *[gr.skip()] * len(marked), chat_note(chat)
        try:
            results = dashboard.results(db_text, run or ALL_RUNS).only(chosen_decoding)
            plots = results.figures(bench, chosen_methods, chat)
        except UserError:  # the explorer says so when it is next loaded; the chat goes on
            return *[gr.skip()] * len(marked), chat_note(chat)
        level = level_plot(results, bench, method, chat) if method else gr.skip()
        lines = [plots["pareto"], plots["mean"], plots["tokens"], plots["think"], level]
        return *lines, *results.heatmaps(bench, chat), plots["bleed"], chat_note(chat)

    @friendly
    def show_samples(
        db_text: str, bench: str, method: str, lam: float | None, chosen_decoding: str, run: str
    ):
        lams = dashboard.results(db_text, run).only(chosen_decoding).lams(bench, method)
        lam = lam if lam in lams else (lams[-1] if lams else None)
        if lam is None:
            return gr.Dropdown(choices=lams, value=lam), ""
        view = samples_view(dashboard, db_text, bench, method, lam, chosen_decoding, run)
        return gr.Dropdown(choices=lams, value=lam), view

    inputs = [db, benchmark, methods, decoding, run, chat_spec]
    outputs = [benchmark, methods, pareto, accuracy, tokens, think]
    outputs += [sample_method, sample_lam, samples, votes, level_method, by_level]
    outputs += [findings, heat_accuracy, heat_tokens, decoding, run, chat_line, bleed]
    marked = [pareto, accuracy, tokens, think, by_level, heat_accuracy, heat_tokens, bleed]
    load.click(refresh, inputs, outputs, api_name="explore")
    hidden = dict(api_visibility="undocumented")
    for trigger in (sample_method.input, sample_lam.input):
        trigger(
            show_samples,
            [db, benchmark, sample_method, sample_lam, decoding, run],
            [sample_lam, samples],
        )
    level_inputs = [db, benchmark, level_method, decoding, run, chat_spec]
    level_method.input(show_levels, level_inputs, by_level, **hidden)
    benchmark.input(refresh, inputs, outputs, **hidden)
    methods.input(refresh, inputs, outputs, **hidden)
    decoding.input(refresh, inputs, outputs, **hidden)
    run.input(refresh, inputs, outputs, **hidden)
    mark_inputs = [db, benchmark, methods, decoding, run, level_method, chat_spec]
    return Explorer(db, refresh, inputs, outputs, mark, mark_inputs, [*marked, chat_line])


def chat_note(chat: MergeSpec | None) -> str:
    if chat is None:
        return ""
    return (
        f"**Chat's merge:** {chat.label()} — marked in red on every plot. "
        "Click any point to load its merge into the chat."
    )
