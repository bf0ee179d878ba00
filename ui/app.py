"""The whole page: title, the λ explanation, and one tab per part of the dashboard."""

from __future__ import annotations

import gradio as gr

from spectrum.dashboard import Dashboard
from ui.chat_tab import build_chat_tab
from ui.explorer_tab import build_explorer_tab
from ui.linked import build_share_box, wire
from ui.sweep_tab import build_sweep_tab
from ui.weights_tab import build_weights_tab

HEADER = """
# Thinking Spectrum
Merging a **direct** model's weights with a **thinking** model's at strength **λ** gives every
model in between: λ = 0 answers at once like the direct parent, λ = 1 reasons inside
`<think>…</think>` like the thinking parent. Drag λ and watch the reasoning depth change.
"""

# System fonts only: the page must not fetch anything from the internet (Google Fonts).
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)

CSS = """
.gradio-container { max-width: 1280px !important; }
#merge-status { align-self: center; }
#sweep-progress progress { width: 100%; height: 1.1em; accent-color: #6366f1; }
#sweep-progress .sweep-line, #sweep-progress .sweep-idle { color: var(--body-text-color-subdued); }
#samples { overflow-wrap: anywhere; }
#samples summary { cursor: pointer; color: var(--body-text-color-subdued); }
#findings summary { cursor: pointer; }
/* A phone keeps the three answers side by side: one column per screen, swiped through. */
@media (max-width: 700px) {
  #chat-row { flex-wrap: nowrap !important; overflow-x: auto; scroll-snap-type: x mandatory; }
  #chat-row > * { flex: 0 0 88% !important; min-width: 88% !important;
                  scroll-snap-align: center; }
}
"""


def build_app(dashboard: Dashboard) -> gr.Blocks:
    with gr.Blocks(title="Thinking Spectrum") as demo:
        gr.Markdown(HEADER)
        with gr.Tabs():
            with gr.Tab("Merge & chat", id="chat"):
                chat = build_chat_tab(dashboard)
                share_box = build_share_box()
            with gr.Tab("Spectrum explorer", id="explorer") as explorer_tab:
                explorer = build_explorer_tab(dashboard, chat.spec)
            with gr.Tab("Weights", id="weights"):
                build_weights_tab(dashboard)
            with gr.Tab("Sweep", id="sweep"):
                build_sweep_tab(dashboard, explorer)
        # Opening the explorer draws the results at once; "Load" is for another DB file.
        explorer_tab.select(
            explorer.refresh, explorer.inputs, explorer.outputs, api_visibility="undocumented"
        )
        # The chat's merge on every plot, a click on a point into the chat, shared links.
        wire(demo, dashboard, chat, explorer, share_box)
    return demo


def launch(dashboard: Dashboard, *, host: str, port: int, share: bool = False) -> None:
    demo = build_app(dashboard)
    # One generation per event at a time is the default; chat allows two pages at once
    # (the merged column is serialized by the merger's session lock anyway).
    demo.queue(default_concurrency_limit=2)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=THEME,
        css=CSS,
        footer_links=["api", "gradio"],
    )
