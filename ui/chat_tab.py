"""The Merge & chat tab: method, λ and scope controls; three streaming chat columns; votes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr

from spectrum.dashboard import (
    COLUMNS,
    MODULE_KINDS,
    SAMPLING_MODES,
    Dashboard,
    MergeSpec,
    Param,
    Reply,
    Turn,
    decoding_for,
    display_text,
    example_prompts,
)
from ui.common import friendly, gpu

TITLES = {"direct": "Direct (λ = 0)", "merged": "Merged", "thinking": "Thinking (λ = 1)"}
# KaTeX renders these in every column; display_text puts bare \boxed{…} inside $…$.
LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]
VOTE_BUTTONS = {
    "direct": "Direct",
    "merged": "Merged",
    "thinking": "Thinking",
    "tie": "Tie",
    "all_bad": "All bad",
}


@dataclass
class MergeControls:
    method: gr.Dropdown
    lam: gr.Slider
    layers: gr.Textbox
    modules: gr.CheckboxGroup
    seed: gr.Number
    params: list[tuple[str, str, gr.Component]]  # (method, parameter name, widget)
    groups: dict[str, gr.Group]  # each method's parameter widgets, shown when it is picked
    status: gr.Markdown  # the merge now loaded, and how long the re-merge took
    apply: gr.Button
    module_lams: gr.Textbox  # λ per module kind, e.g. attn=0.8,mlp=0.3 (others: the slider)

    @property
    def inputs(self) -> list[gr.Component]:
        widgets = [widget for _, _, widget in self.params]
        # The per-kind λ goes last: API callers that leave it out get its default ("").
        return [self.method, self.lam, self.layers, self.modules, self.seed, *widgets,
                self.module_lams]  # fmt: skip

    def request(self, values: tuple[Any, ...]) -> MergeSpec:
        """The merge the widgets' ``values`` (in ``inputs`` order) describe."""
        method, lam, layers, modules, seed, *param_values, module_lams = values
        params = {
            name: value
            for (owner, name, _), value in zip(self.params, param_values, strict=True)
            if owner == method
        }
        if not modules:
            raise gr.Error("pick at least one module kind to merge", print_exception=False)
        return MergeSpec(
            method=method,
            lam=float(lam),
            params=params,
            layers=(layers or "").strip() or None,
            modules=None if set(modules) == set(MODULE_KINDS) else tuple(modules),
            seed=int(seed or 0),
            module_lams=(module_lams or "").strip() or None,
        )


def param_widget(param: Param) -> gr.Component:
    common = dict(label=param.name, info=param.help, value=param.default)
    if param.type is bool:
        return gr.Checkbox(**common)
    if param.choices:
        return gr.Dropdown(choices=list(param.choices), **common)
    if param.type in (int, float) and None not in (param.minimum, param.maximum):
        step = 1 if param.type is int else 0.01
        return gr.Slider(param.minimum, param.maximum, step=step, **common)
    if param.type in (int, float):
        return gr.Number(precision=0 if param.type is int else None, **common)
    return gr.Textbox(**common)


def milliseconds(value: float) -> str:
    """3 significant digits below 100 ms (a tiny model re-merges in well under 1 ms)."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def stats_line(reply: Reply | None) -> str:
    if reply is None:
        return ""
    update = reply.update
    parts = [f"{update.n_tokens} tokens", f"{update.tokens_per_s:.1f} tok/s"]
    if reply.merge is not None:
        parts.insert(0, reply.merge.spec.label())
    if update.truncated:
        parts.append("hit the token limit")
    elif not update.finished:
        parts.append("generating…")
    return " · ".join(parts)


def column_messages(turns: list[Turn], column: str) -> list[dict[str, str]]:
    messages = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.prompt})
        reply = turn.replies.get(column)
        if reply is not None:
            content = f"{display_text(reply.update.text)}\n\n<sub>{stats_line(reply)}</sub>"
            messages.append({"role": "assistant", "content": content})
    return messages


def render(turns: list[Turn]) -> list[Any]:
    """The three chatbots; the merged one titled with the merge that answered last."""
    last = turns[-1].replies if turns else {}
    merged = last.get("merged")
    merged_title = TITLES["merged"] + (f" — {merged.merge.spec.label()}" if merged else "")
    chats = [
        gr.Chatbot(
            value=column_messages(turns, column),
            label=merged_title if column == "merged" else TITLES[column],
        )
        for column in COLUMNS
    ]
    return chats


def build_merge_controls(dashboard: Dashboard) -> MergeControls:
    methods, hidden = dashboard.method_names(), len(dashboard.unavailable_methods())
    with gr.Row(equal_height=True):
        method = gr.Dropdown(
            methods,
            value=methods[0],
            label="Merge method",
            info=f"{hidden} more need a base model (--base)" if hidden else None,
            scale=1,
        )
        lam = gr.Slider(
            0,
            1,
            value=0.5,
            step=0.05,
            label="λ — thinking dose (0 = direct, 1 = thinking)",
            info="Release the slider to re-merge the weights in place.",
            scale=3,
            elem_id="lam-slider",
        )
        status = gr.Markdown("Loading the first merge…", elem_id="merge-status", scale=2)
    params: list[tuple[str, str, gr.Component]] = []
    groups: dict[str, gr.Group] = {}
    with gr.Accordion("Method parameters and merge scope", open=False):
        for name in methods:
            merge_method = dashboard.method(name)
            with gr.Group(visible=name == methods[0]) as groups[name]:
                gr.Markdown(f"**{name}** — {merge_method.summary}")
                for param in merge_method.params:
                    params.append((name, param.name, param_widget(param)))
        with gr.Row():
            layers = gr.Textbox(
                label="Layers", placeholder="all — or e.g. 12-35, 0-3,8", max_lines=1
            )
            modules = gr.CheckboxGroup(
                list(MODULE_KINDS), value=list(MODULE_KINDS), label="Modules to merge"
            )
            seed = gr.Number(0, precision=0, label="Merge seed (DARE masks)", minimum=0)
        module_lams = gr.Textbox(
            "",  # a value makes the API parameter optional: older callers send none
            label="λ per module kind",
            placeholder="e.g. attn=0.8,mlp=0.3 — other kinds merge at the slider's λ",
            max_lines=1,
            elem_id="module-lams",
        )
        apply = gr.Button("Apply parameters and scope", size="sm")
    return MergeControls(
        method, lam, layers, modules, seed, params, groups, status, apply, module_lams
    )


def build_chat_tab(demo: gr.Blocks, dashboard: Dashboard) -> None:
    request_state = gr.State(MergeSpec())
    turns_state = gr.State([])
    voted_state = gr.State(None)  # the turn this page last voted on

    controls = build_merge_controls(dashboard)

    with gr.Row(equal_height=True):
        chats = [
            gr.Chatbot(
                label=TITLES[column],
                height=300,
                min_width=200,
                reasoning_tags=[("<think>", "</think>")],
                latex_delimiters=LATEX_DELIMITERS,
                feedback_options=None,
                buttons=["copy_all"],
                elem_id=f"chat-{column}",
            )
            for column in COLUMNS
        ]
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(
            placeholder="Ask all three models — e.g. pick an example below",
            show_label=False,
            lines=1,
            max_lines=4,
            scale=5,
            elem_id="prompt",
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="send")
        stop = gr.Button(
            "Stop", variant="stop", scale=1, min_width=90, interactive=False, elem_id="stop"
        )
    # The examples sit right under the prompt: at 1280×800 they show without scrolling.
    prompts, labels = example_prompts()
    gr.Examples(prompts, inputs=prompt, example_labels=labels, label="Synthetic benchmark examples")
    with gr.Row(equal_height=True):
        small = dict(size="sm", min_width=100)
        regenerate = gr.Button("Regenerate", **small)
        clear = gr.Button("Clear", **small)
        gr.Markdown("**Best answer?**", min_width=100, elem_id="vote-label")
        votes = {
            choice: gr.Button(text, elem_id=f"vote-{choice}", **small)
            for choice, text in VOTE_BUTTONS.items()
        }
    with gr.Accordion("Decoding", open=False):
        with gr.Row():
            mode = gr.Radio(list(SAMPLING_MODES), value="per-model defaults", label="Sampling")
            # Prompt and answer share the context: leave half of it to the conversation.
            cap = min(dashboard.limits.max_new_tokens, dashboard.context_length)
            max_new = gr.Slider(
                min(16, cap), cap, value=min(384, cap // 2), step=1, label="Max new tokens"
            )
        with gr.Row():
            temperature = gr.Slider(0.05, 2, value=0.6, step=0.05, label="Temperature (custom)")
            top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p (custom)")
            top_k = gr.Slider(0, 100, value=20, step=1, label="Top-k (custom, 0 = off)")
        gr.Markdown(dashboard.limits.describe(), elem_id="chat-limits")
    decoding_inputs = [mode, max_new, temperature, top_p, top_k]
    with gr.Accordion("Export merged model", open=False):
        with gr.Row(equal_height=True):
            export_folder = gr.Textbox(
                value="exports/merged", label="Folder (inside exports/ or another allowed folder)"
            )
            overwrite = gr.Checkbox(False, label="Overwrite")
            export_button = gr.Button("Export merged model", scale=0, min_width=200)
        gr.Markdown(dashboard.export_quota.describe(), elem_id="export-quota")
        export_status = gr.Markdown()

    def decoding(*values: Any) -> dict:
        return {column: decoding_for(column, *values) for column in COLUMNS}

    @gpu
    @friendly
    def remerge(*values: Any):
        request = controls.request(values)
        loaded = dashboard.set_merge(request)
        served_by = dashboard.served_by(loaded.spec)
        status = f"**Merged:** {loaded.spec.label()} · served by the {served_by}"
        if loaded.version:  # the live merger re-merged the shared model for this page
            status += f", {milliseconds(loaded.set_ms)} ms (version {loaded.version})"
        return status, request

    def show_params(method: str):
        return [gr.Group(visible=name == method) for name in controls.groups]

    # One stop event per page (session), made when Send is pressed: Stop sets it and all
    # three streams end at their next token, freeing the live model at once.
    stops: dict[str, threading.Event] = {}

    def streaming(page: gr.Request):
        stops[page.session_hash] = threading.Event()
        return gr.Button(interactive=False), gr.Button(interactive=True)

    def idle():
        return gr.Button(interactive=True), gr.Button(interactive=False)

    def stop_streams(page: gr.Request):
        if page.session_hash in stops:
            stops[page.session_hash].set()
        return gr.Button(interactive=False)

    @gpu
    @friendly
    def answer(
        prompt_text: str,
        turns: list[Turn],
        request: MergeSpec,
        mode: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        page: gr.Request,  # Gradio passes it (a positional parameter, after the inputs)
    ):
        settings = decoding(mode, max_new_tokens, temperature, top_p, top_k)
        halt = stops.get(page.session_hash)  # None when called through the API alone
        partial: Turn | None = None
        for snapshot in dashboard.chat(turns, prompt_text, request, settings, stop=halt):
            replies = {column: reply for column, reply in snapshot.items() if reply}
            partial = Turn(prompt_text, replies)
            yield *render([*turns, partial]), turns, gr.Textbox()
        turns = [*turns, partial]
        yield *render(turns), turns, ""

    def regenerate_last(
        turns: list[Turn],
        request: MergeSpec,
        mode: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        page: gr.Request,
    ):
        if not turns:
            raise gr.Error("nothing to regenerate yet", print_exception=False)
        settings = (mode, max_new_tokens, temperature, top_p, top_k)
        yield from answer(turns[-1].prompt, turns[:-1], request, *settings, page)

    @friendly
    def vote(choice: str, turns: list[Turn], voted: Turn | None, *decoding_values):
        if turns and turns[-1] == voted:
            gr.Warning("You already voted on these answers.")
            return voted
        dashboard.vote(turns, choice, decoding(*decoding_values))
        gr.Info(f"Vote saved ({VOTE_BUTTONS[choice]}) in {dashboard.db.name}.")
        return turns[-1]

    @friendly
    def export(folder: str, replace_existing: bool, *values: Any):
        out = dashboard.export(folder, controls.request(values), overwrite=replace_existing)
        return f"Wrote **{out}** (weights, model card, merge_config.json)."

    chat_outputs = [*chats, turns_state, prompt]
    remerge_outputs = [controls.status, request_state]
    controls.lam.release(remerge, controls.inputs, remerge_outputs, api_name="set_merge")
    groups = list(controls.groups.values())
    hidden = dict(api_visibility="undocumented")
    controls.method.change(show_params, controls.method, groups, queue=False, **hidden).then(
        remerge, controls.inputs, remerge_outputs, **hidden
    )
    controls.apply.click(remerge, controls.inputs, remerge_outputs, **hidden)
    chat_inputs = [prompt, turns_state, request_state, *decoding_inputs]
    buttons = [send, stop]
    # Send (or Enter, or Regenerate) greys Send and lights Stop, streams, then swaps back.
    for trigger, handler, inputs, name in (
        (send.click, answer, chat_inputs, "chat"),
        (prompt.submit, answer, chat_inputs, None),
        (regenerate.click, friendly(regenerate_last), chat_inputs[1:], "regenerate"),
    ):
        api = dict(api_name=name) if name else hidden
        trigger(streaming, None, buttons, queue=False, **hidden).then(
            handler, inputs, chat_outputs, **api
        ).then(idle, None, buttons, queue=False, **hidden)
    stop.click(stop_streams, None, stop, queue=False, api_name="stop")
    clear.click(lambda: (*render([]), [], ""), None, chat_outputs, queue=False, **hidden)
    for choice, button in votes.items():
        button.click(
            lambda *args, choice=choice: vote(choice, *args),
            [turns_state, voted_state, *decoding_inputs],
            voted_state,
            api_name=f"vote_{choice}",
        )
    export_button.click(
        export, [export_folder, overwrite, *controls.inputs], export_status, api_name="export"
    )
    # Each page starts by loading what its controls show.
    demo.load(remerge, controls.inputs, remerge_outputs, **hidden)
