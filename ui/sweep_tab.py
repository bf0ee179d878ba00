"""The Sweep tab: evaluate a λ grid on the loaded pair into a results DB, then explore it."""

from __future__ import annotations

import gradio as gr

from spectrum.dashboard import Dashboard
from ui.common import friendly
from ui.explorer_tab import Explorer


def build_sweep_tab(dashboard: Dashboard, explorer: Explorer) -> None:
    gr.Markdown(
        "Generate and grade answers for every method × λ below on the loaded pair. Finished "
        "samples are kept, so a stopped sweep resumes where it left off."
    )
    with gr.Row():
        methods = gr.CheckboxGroup(dashboard.method_names(), value=["linear"], label="Methods")
        lams = gr.Textbox("0:1:0.25", label="λ grid (start:stop:step or a list)")
    with gr.Row():
        benchmark = gr.Dropdown(dashboard.benchmark_names(), value="synthetic", label="Benchmark")
        limit = gr.Number(4, precision=0, minimum=1, label="Problems (per level: synthetic)")
        k = gr.Number(1, precision=0, minimum=1, label="Samples per problem")
        max_new = gr.Number(256, precision=0, minimum=1, label="Max new tokens")
    with gr.Row(equal_height=True):
        db = gr.Textbox(explorer.db.value, label="Results database", scale=3)
        run = gr.Button("Run sweep", variant="primary", scale=1, elem_id="sweep")
    status = gr.Markdown()

    @friendly
    def sweep(
        db_text,
        chosen,
        grid,
        bench,
        problems,
        samples,
        tokens,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (how Gradio finds it)
    ):
        result = dashboard.sweep(
            db_text, chosen, grid, bench, limit=problems, k=samples, max_new_tokens=tokens
        )
        return (
            f"Done: {result.generated} samples generated, {result.skipped} already stored "
            f"(run {result.run_id}). The explorer now shows this database.",
            db_text,
        )

    run.click(
        sweep,
        [db, methods, lams, benchmark, limit, k, max_new],
        [status, explorer.db],
        api_name="sweep",
    ).success(explorer.refresh, explorer.inputs, explorer.outputs)
