"""The Weights tab: how far apart the loaded pair is, where, and how dense Δ is."""

from __future__ import annotations

import gradio as gr

from spectrum.dashboard import Dashboard
from ui.common import friendly


def build_weights_tab(dashboard: Dashboard) -> None:
    gr.Markdown(
        "Δ = θ_thinking − θ_direct of the loaded pair: relative distance ‖Δ‖/‖θ_D‖ per layer "
        "and module, the distribution of Δ, and how concentrated ‖Δ‖² is compared with a "
        "dense (Gaussian) difference."
    )
    analyze = gr.Button("Analyze the loaded pair", variant="primary", elem_id="analyze")
    with gr.Row():
        layer = gr.Plot(label="Relative distance per layer", show_label=False)
        module = gr.Plot(label="Relative distance per module", show_label=False)
    with gr.Row():
        histogram = gr.Plot(label="Histogram of Δ", show_label=False)
        energy = gr.Plot(label="Cumulative share of Σ Δ² vs Gaussian reference", show_label=False)

    @friendly
    def draw(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (how Gradio finds it)
        plots = dashboard.weight_figures()
        return plots["layer"], plots["module"], plots["histogram"], plots["energy"]

    analyze.click(draw, None, [layer, module, histogram, energy], api_name="weights")
