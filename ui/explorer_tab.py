"""The Spectrum explorer tab: metrics vs λ, the Pareto plot, stored samples, votes."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from spectrum.dashboard import CHOICES, REPO, Dashboard
from spectrum.errors import UserError
from ui.common import friendly


@dataclass
class Explorer:
    """What other tabs need to refresh the explorer (the sweep tab does, when it ends)."""

    db: gr.Textbox
    refresh: object
    inputs: list
    outputs: list


def shown_path(path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def votes_frame(dashboard: Dashboard, db: str) -> pd.DataFrame:
    try:
        counts = dashboard.vote_counts(db)
    except UserError as error:  # the plots do not depend on the votes: warn, go on
        gr.Warning(str(error))
        counts = {}
    rows = [{"method": m, "λ": lam, **choices} for (m, lam), choices in sorted(counts.items())]
    return pd.DataFrame(rows, columns=["method", "λ", *CHOICES])


def build_explorer_tab(dashboard: Dashboard) -> Explorer:
    with gr.Row(equal_height=True):
        db = gr.Textbox(shown_path(dashboard.db), label="Results database (DuckDB)", scale=3)
        benchmark = gr.Dropdown([], label="Benchmark", scale=1, allow_custom_value=True)
        methods = gr.CheckboxGroup([], label="Methods", scale=3)
        load = gr.Button("Load", variant="primary", scale=0, min_width=100, elem_id="explore")
    with gr.Row():
        pareto = gr.Plot(
            label="Accuracy vs tokens (stars: parents, rings: Pareto improvements)",
            show_label=False,
        )
        accuracy = gr.Plot(label="Accuracy vs λ", show_label=False)
    with gr.Row():
        tokens = gr.Plot(label="Token#N vs λ", show_label=False)
        think = gr.Plot(label="Think#R vs λ", show_label=False)
    gr.Markdown("### Stored responses of one configuration")
    with gr.Row(equal_height=True):
        sample_method = gr.Dropdown([], label="Method", allow_custom_value=True)
        sample_lam = gr.Dropdown([], label="λ", allow_custom_value=True)
    samples = gr.Dataframe(wrap=True, max_height=320, label="Samples")
    with gr.Accordion("Human-preference votes from the chat tab", open=False):
        votes = gr.Dataframe(label="Votes per merge")

    @friendly
    def refresh(db_text: str, chosen_benchmark: str | None, chosen_methods: list[str]):
        results = dashboard.results(db_text)
        bench = chosen_benchmark if chosen_benchmark in results.benchmarks else None
        bench = bench or results.benchmarks[0]
        available = results.methods(bench)
        picked = [m for m in chosen_methods or [] if m in available] or available
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
            dashboard.samples(db_text, bench, picked[0], lams[-1]),
            votes_frame(dashboard, db_text),
        )

    @friendly
    def show_samples(db_text: str, bench: str, method: str, lam: float | None):
        lams = dashboard.results(db_text).lams(bench, method)
        lam = lam if lam in lams else (lams[-1] if lams else None)
        frame = dashboard.samples(db_text, bench, method, lam) if lam is not None else None
        return gr.Dropdown(choices=lams, value=lam), frame

    inputs = [db, benchmark, methods]
    outputs = [benchmark, methods, pareto, accuracy, tokens, think]
    outputs += [sample_method, sample_lam, samples, votes]
    load.click(refresh, inputs, outputs, api_name="explore")
    hidden = dict(api_visibility="undocumented")
    for trigger in (sample_method.input, sample_lam.input):
        trigger(show_samples, [db, benchmark, sample_method, sample_lam], [sample_lam, samples])
    benchmark.input(refresh, inputs, outputs, **hidden)
    methods.input(refresh, inputs, outputs, **hidden)
    return Explorer(db, refresh, inputs, outputs)
