"""Linked views: a shared link sets the chat on load; the chat's merge is marked on the
explorer's plots; a click on a plotted point loads its merge into the chat; the chat's
merge as a link, a `spectrum merge` command line and a merge file.

gr.Plot has no click event for plotly figures (it has ``change`` only), so a small script
listens to plotly's own ``plotly_click`` and writes the point's merge into a hidden
textbox, whose ``input`` event does the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

from spectrum.dashboard import Dashboard, MergeSpec, Turn
from spectrum.errors import UserError
from ui.chat_tab import ChatLink
from ui.common import friendly
from ui.explorer_tab import Explorer

# Attaches once to every plot with the class ``linked-plot``, and again after plotly
# rebuilt one (a purge replaces the plot's event emitter ``_ev``): each redraw keeps the
# click working. A click writes {merge, at} so clicking the same point twice fires again.
CLICK_JS = """
() => {
  if (window.spectrumLinked) return;
  window.spectrumLinked = true;
  const attach = () => {
    document.querySelectorAll(".linked-plot .js-plotly-plot").forEach((plot) => {
      if (typeof plot.on !== "function" || plot.spectrumEmitter === plot._ev) return;
      plot.spectrumEmitter = plot._ev;
      plot.on("plotly_click", (event) => {
        const point = event && event.points && event.points[0];
        const merge = point && point.customdata;
        if (typeof merge !== "string" || !merge) return;
        const box = document.querySelector("#explorer-pick textarea, #explorer-pick input");
        if (!box) return;
        box.value = JSON.stringify({ merge: merge, at: Date.now() });
        box.dispatchEvent(new Event("input", { bubbles: true }));
      });
    });
  };
  let queued = false;
  new MutationObserver(() => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; attach(); });
  }).observe(document.body, { childList: true, subtree: true });
  attach();
}
"""

# The page's own address with the link's query: the server may sit behind a proxy (a
# Space), so only the browser knows the address its visitor sees.
FULL_URL_JS = """
(query) => query && query.startsWith("?")
  ? window.location.origin + window.location.pathname + query
  : query
"""


@dataclass
class ShareBox:
    link: gr.Textbox
    command: gr.Code
    config: gr.Code
    share: gr.Button
    copy: gr.Button


def build_share_box() -> ShareBox:
    """The chat tab's "Share this merge" part (wired by ``wire``)."""
    with gr.Accordion("Share this merge: link, command line, YAML", open=False):
        with gr.Row(equal_height=True):
            share = gr.Button("Share link", size="sm", scale=0, min_width=140, elem_id="share")
            link = gr.Textbox(
                label="Link to this merge and prompt",
                buttons=["copy"],
                interactive=False,
                scale=5,
                elem_id="share-link",
            )
        copy = gr.Button("Copy as CLI / YAML", size="sm", elem_id="copy-merge")
        with gr.Row():
            command = gr.Code(
                label="spectrum merge (run from the repository root)",
                language="shell",
                interactive=False,
                elem_id="merge-cli",
            )
            config = gr.Code(
                label="spectrum merge --config merge.yaml --out merged",
                language="yaml",
                interactive=False,
                elem_id="merge-yaml",
            )
    return ShareBox(link, command, config, share, copy)


def wire(
    demo: gr.Blocks, dashboard: Dashboard, chat: ChatLink, explorer: Explorer, box: ShareBox
) -> None:
    controls = chat.controls
    hidden = dict(api_visibility="undocumented")
    pick = gr.Textbox(visible="hidden", elem_id="explorer-pick")
    # Set when the controls' update leaves method and λ as they were: no change event
    # then re-merges, so the chain does.
    remerge_needed = gr.State(True)

    def shown(spec: MergeSpec, method: str, lam: float) -> list[Any]:
        unchanged = spec.method == method and spec.lam == float(lam)
        return [*controls.show(spec), unchanged]

    def open_link(method: str, lam: float, request: gr.Request):
        state = dashboard.read_link(dict(request.query_params))
        if state.warning():
            gr.Warning(state.warning())
        if not request.query_params:
            return *[gr.skip()] * len(controls.inputs), gr.skip(), True
        *values, unchanged = shown(state.spec, method, lam)
        return *values, state.prompt, unchanged

    @friendly
    def load_point(text: str, method: str, lam: float):
        try:
            merge = json.loads(text)["merge"]
        except (ValueError, KeyError, TypeError):
            raise UserError("that point carries no merge") from None
        spec = dashboard.point_merge(merge)
        gr.Info(f"The chat now merges {spec.label()}.")
        return shown(spec, method, lam)

    def remerge_if_needed(needed: bool, *values: Any):
        if not needed:
            return [gr.skip()] * len(chat.remerge_outputs)
        return chat.remerge(*values)

    # A page opens on its link's state; the first merge waits for it.
    link_outputs = [*controls.inputs, chat.prompt, remerge_needed]
    demo.load(open_link, [controls.method, controls.lam], link_outputs, **hidden).then(
        remerge_if_needed, [remerge_needed, *controls.inputs], chat.remerge_outputs, **hidden
    )
    demo.load(None, js=CLICK_JS)

    pick.change(
        load_point,
        [pick, controls.method, controls.lam],
        [*controls.inputs, remerge_needed],
        **hidden,
    ).success(remerge_if_needed, [remerge_needed, *controls.inputs], chat.remerge_outputs, **hidden)
    # A drag of λ re-merges many times: the plots follow the last merge, never each one.
    chat.spec.change(
        explorer.mark,
        explorer.mark_inputs,
        explorer.mark_outputs,
        trigger_mode="always_last",
        show_progress="hidden",
        **hidden,
    )

    @friendly
    def share_link(spec: MergeSpec, prompt: str, turns: list[Turn]) -> str:
        last = turns[-1].prompt if turns else ""
        return dashboard.share_query(spec, prompt.strip() or last)

    box.share.click(
        share_link, [chat.spec, chat.prompt, chat.turns], box.link, queue=False, **hidden
    ).then(None, box.link, box.link, js=FULL_URL_JS, **hidden)

    @friendly
    def command_and_file(spec: MergeSpec) -> tuple[str, str]:
        return dashboard.merge_command(spec), dashboard.merge_yaml(spec)

    box.copy.click(command_and_file, chat.spec, [box.command, box.config], queue=False, **hidden)
