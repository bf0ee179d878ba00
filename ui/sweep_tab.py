"""The Sweep tab: evaluate a λ grid on the loaded pair into a results DB, then explore it.

The sweep runs in a worker thread; the handler streams its progress (samples done / total,
the configuration at work, ETA) into a bar while Run is disabled and Stop enabled. Stop
sets the sweep's stop event: the batch in flight is stored, and the next Run resumes.
"""

from __future__ import annotations

import html
import queue
import threading

import gradio as gr

from spectrum.dashboard import Dashboard, SweepProgress, SweepResult
from ui.common import friendly
from ui.explorer_tab import Explorer

IDLE = '<div class="sweep-idle">No sweep running.</div>'


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def progress_bar(progress: SweepProgress | None, note: str = "") -> str:
    """The bar as HTML: a <progress> element and one line saying where the sweep is."""
    if progress is None:
        return f'<progress></progress><div class="sweep-line">Starting… {note}</div>'
    eta = progress.eta_s
    parts = [
        f"{progress.done} / {progress.total} samples",
        f"{progress.method} · λ {progress.lam:g} · {progress.benchmark}",
        f"{duration(progress.elapsed_s)} elapsed",
        "estimating time left…" if eta is None else f"about {duration(eta)} left",
    ]
    line = html.escape(" · ".join(parts) + (f" — {note}" if note else ""))
    return (
        f'<progress value="{progress.done}" max="{progress.total}"></progress>'
        f'<div class="sweep-line">{line}</div>'
    )


def outcome(result: SweepResult) -> str:
    if result.stopped:
        return (
            f"**Stopped:** {result.generated} samples generated and stored, {result.skipped} "
            "were already there. Press Run sweep to resume where it stopped."
        )
    return (
        f"Done: {result.generated} samples generated, {result.skipped} already stored "
        f"(run {result.run_id}). The explorer now shows this database."
    )


def build_sweep_tab(dashboard: Dashboard, explorer: Explorer) -> None:
    limits = dashboard.sweep_limits
    gr.Markdown(
        "Generate and grade answers for every method × λ below on the loaded pair. Finished "
        "samples are kept, so a stopped sweep resumes where it left off.\n\n"
        f"Limits of this server: at most {limits.grid:,} configurations (methods × λs), "
        f"{limits.problems:,} problems, {limits.k:,} samples per problem, "
        f"{limits.new_tokens:,} max new tokens, and {limits.work:,} tokens in all "
        "(answers × max new tokens).",
        elem_id="sweep-limits",
    )
    with gr.Row():
        methods = gr.CheckboxGroup(dashboard.method_names(), value=["linear"], label="Methods")
        lams = gr.Textbox("0:1:0.25", label="λ grid (start:stop:step or a list)")
    with gr.Row():
        benchmark = gr.Dropdown(dashboard.benchmark_names(), value="synthetic", label="Benchmark")
        limit = gr.Number(4, precision=0, minimum=1, label="Problems (per level: synthetic)")
        k = gr.Number(1, precision=0, minimum=1, maximum=limits.k, label="Samples per problem")
        max_new = gr.Number(
            256, precision=0, minimum=1, maximum=limits.new_tokens, label="Max new tokens"
        )
    with gr.Row(equal_height=True):
        db = gr.Textbox(explorer.db.value, label="Results database", scale=3)
        run = gr.Button("Run sweep", variant="primary", scale=1, elem_id="sweep")
        stop = gr.Button("Stop", variant="stop", scale=1, interactive=False, elem_id="sweep-stop")
    bar = gr.HTML(IDLE, elem_id="sweep-progress")
    status = gr.Markdown(elem_id="sweep-status")
    # One stop event per page (session): the Stop button reaches the sweep its page started.
    stops: dict[str, threading.Event] = {}

    @friendly
    def sweep(db_text, chosen, grid, bench, problems, samples, tokens, request: gr.Request):
        halt = stops[request.session_hash] = threading.Event()
        updates: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                updates.put(
                    dashboard.sweep(
                        db_text,
                        chosen,
                        grid,
                        bench,
                        limit=problems,
                        k=samples,
                        max_new_tokens=tokens,
                        report=updates.put,
                        stop=halt,
                    )
                )
            except Exception as error:  # re-raised in the handler: the page shows it
                updates.put(error)

        busy = (gr.Button(interactive=False), gr.Button(interactive=True))
        yield "", gr.Textbox(), progress_bar(None), *busy
        worker = threading.Thread(target=work, name="page-sweep", daemon=True)
        worker.start()
        last = None
        try:
            while True:
                update = updates.get()
                if isinstance(update, Exception):
                    yield gr.Markdown(), gr.Textbox(), IDLE, *busy  # no bar left "Starting…"
                    raise update
                if isinstance(update, SweepResult):
                    break
                last = update
                note = "stopping after this batch…" if halt.is_set() else ""
                yield gr.Markdown(), gr.Textbox(), progress_bar(update, note), *busy
        finally:
            halt.set()  # the page went away or the sweep failed: end the worker too
            worker.join()
        final = progress_bar(last) if last is not None else IDLE
        yield outcome(update), db_text, final, gr.Button(), gr.Button()

    def stop_sweep(request: gr.Request):
        halt = stops.get(request.session_hash)
        if halt is not None:
            halt.set()
        return gr.Button(interactive=False)

    def idle():
        return gr.Button(interactive=True), gr.Button(interactive=False)

    started = run.click(
        sweep,
        [db, methods, lams, benchmark, limit, k, max_new],
        [status, explorer.db, bar, run, stop],
        api_name="sweep",
    )
    # Whether it finished, stopped or failed, Run comes back and Stop goes grey.
    started.then(idle, None, [run, stop], queue=False, api_visibility="undocumented")
    started.success(explorer.refresh, explorer.inputs, explorer.outputs)
    stop.click(stop_sweep, None, stop, queue=False, api_name="stop_sweep")
