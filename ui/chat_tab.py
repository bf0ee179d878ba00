"""The Merge & chat tab: method, λ and scope controls; three streaming chat columns; votes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
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
    blind_order,
    decoding_for,
    example_prompts,
    math_markdown,
)
from ui.common import friendly, gpu

TITLES = {"direct": "Direct (λ = 0)", "merged": "Merged", "thinking": "Thinking (λ = 1)"}
# KaTeX renders these in every column; math_markdown puts bare \boxed{…} inside $…$.
LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]
POSITIONS = ("A", "B", "C")  # a blind turn's neutral column names
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

    def show(self, spec: MergeSpec) -> list[Any]:
        """Updates of ``inputs`` that show ``spec`` (other methods' parameters kept)."""
        params = dict(spec.params)
        widgets = [
            params[name] if owner == spec.method and name in params else gr.skip()
            for owner, name, _ in self.params
        ]
        module_lams = ",".join(f"{kind}={lam!r}" for kind, lam in spec.module_lams or ())
        modules = list(spec.modules or MODULE_KINDS)
        return [spec.method, spec.lam, spec.layers or "", modules, spec.seed, *widgets,
                module_lams]  # fmt: skip


@dataclass
class ChatLink:
    """What the linked views need of the chat: its controls, the merge it has loaded
    (``spec``, set by each re-merge), the prompt and turns, and the re-merge itself."""

    controls: MergeControls
    spec: gr.State
    prompt: gr.Textbox
    turns: gr.State
    remerge: Any
    remerge_outputs: list[gr.Component]


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


def stats_line(reply: Reply | None, *, blind: bool = False) -> str:
    if reply is None:
        return ""
    update = reply.update
    parts = [f"{update.n_tokens} tokens", f"{update.tokens_per_s:.1f} tok/s"]
    if reply.merge is not None and not blind:
        parts.insert(0, reply.merge.spec.label())
    if update.stopped:
        parts.append("**stopped**")
    elif update.truncated:
        parts.append("hit the token limit")
    elif not update.finished:
        parts.append("generating…")
    return " · ".join(parts)


def reply_messages(reply: Reply, *, blind: bool) -> list[dict[str, Any]]:
    """A reply as the chatbot shows it: a collapsible reasoning block titled with its tokens
    and seconds (spinning only while it thinks), then the answer with its stats line."""
    update = reply.update
    messages: list[dict[str, Any]] = []
    if update.reasoning_tokens:
        done = update.thinks or update.finished  # a stopped reply stops "thinking" too
        metadata = {
            "title": "Reasoning",
            "log": f"{update.reasoning_tokens} tokens",
            "duration": round(update.reasoning_s, 1),
            "status": "done" if done else "pending",
        }
        reasoning = math_markdown(update.reasoning) or "…"
        messages.append({"role": "assistant", "content": reasoning, "metadata": metadata})
    answer = math_markdown(update.answer)
    footer = f"<sub>{stats_line(reply, blind=blind)}</sub>"
    messages.append({"role": "assistant", "content": f"{answer}\n\n{footer}".lstrip()})
    return messages


def column_messages(turns: list[Turn], position: int) -> list[dict[str, Any]]:
    """What the chatbot at ``position`` shows: each turn's model at that position."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.prompt})
        reply = turn.replies.get(turn.column_at(position))
        if reply is not None:
            messages += reply_messages(reply, blind=turn.blind)
    return messages


def title(turn: Turn | None, position: int) -> str:
    """A column's title: the model (the merged one with the merge that answered), or in a
    blind turn "Model A/B/C", with the model named once the vote revealed it."""
    if turn is None:
        return TITLES[COLUMNS[position]]
    column = turn.column_at(position)
    name = TITLES[column]
    merged = turn.replies.get("merged")
    if column == "merged" and merged is not None and merged.merge is not None:
        name += f" — {merged.merge.spec.label()}"
    if turn.order == COLUMNS and not turn.blind:
        return name
    arena_name = f"Model {POSITIONS[position]}"
    return arena_name if turn.blind else f"{arena_name}: {name}"


def render(turns: list[Turn]) -> list[Any]:
    """The three chatbots, titled after the last turn."""
    last = turns[-1] if turns else None
    return [
        gr.Chatbot(value=column_messages(turns, position), label=title(last, position))
        for position in range(len(COLUMNS))
    ]


def changes(turns: list[Turn], messages_sent: list, titles_sent: list) -> list[Any]:
    """One streaming update: per chatbot only what changed since the last one (updated in
    ``messages_sent``/``titles_sent``). A new title re-sends the component; new text only
    its messages (Gradio then sends a diff); an unchanged column nothing at all."""
    last = turns[-1] if turns else None
    updates: list[Any] = []
    for position in range(len(COLUMNS)):
        messages, label = column_messages(turns, position), title(last, position)
        if label != titles_sent[position]:
            updates.append(gr.Chatbot(value=messages, label=label))
        elif messages != messages_sent[position]:
            updates.append(messages)
        else:
            updates.append(gr.skip())
        messages_sent[position], titles_sent[position] = messages, label
    return updates


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
            info="Drag, type or use the arrow keys: the weights re-merge in place.",
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


# The columns repaint at most this often while they stream: an update per token costs the
# server more than the token itself on a small model (bench/page_stream.py), and ten
# repaints a second read as a stream.
REPAINT_S = 0.1

# What sits above and below the columns (the merge controls, the prompt box, the examples)
# takes about 500 px at the page's width.
COLUMN_HEIGHT = "max(300px, calc(100vh - 500px))"


def build_chat_tab(dashboard: Dashboard) -> ChatLink:
    request_state = gr.State(MergeSpec())
    turns_state = gr.State([])
    voted_state = gr.State(None)  # the turn this page last voted on

    controls = build_merge_controls(dashboard)

    # A height fixed per screen keeps Send and Stop still while answers stream: as tall as
    # the window allows with the examples still in view (300 px at 1280×800, 580 px at
    # 1920×1080); a corner handle makes a column taller still. On a phone
    # the columns stay side by side in a row the thumb swipes through (CSS in ui/app.py).
    with gr.Row(equal_height=True, elem_id="chat-row"):
        chats = [
            gr.Chatbot(
                label=TITLES[column],
                height=COLUMN_HEIGHT,
                resizable=True,
                min_width=200,
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
    examples = gr.Examples(
        prompts, inputs=prompt, example_labels=labels, label="Synthetic benchmark examples"
    )
    gr.Markdown(dashboard.history_note(), elem_id="history-note")
    with gr.Row(equal_height=True):
        small = dict(size="sm", min_width=100)
        regenerate = gr.Button("Regenerate", **small)
        clear = gr.Button("Clear", **small)
        arena = gr.Checkbox(
            False,
            label="Blind arena: shuffled as A / B / C, named after your vote",
            elem_id="arena",
            min_width=160,
        )
        gr.Markdown("**Best answer?**", min_width=100, elem_id="vote-label")
        # Votes open only on a finished, unstopped turn (see ``votable``).
        votes = {
            choice: gr.Button(text, elem_id=f"vote-{choice}", interactive=False, **small)
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
                value="exports/merged",
                label="Folder (inside exports/ or another allowed folder)",
                elem_id="export-folder",
            )
            overwrite = gr.Checkbox(False, label="Overwrite")
            export_button = gr.Button(
                "Export merged model", scale=0, min_width=200, elem_id="export-button"
            )
        gr.Markdown(dashboard.export_quota.describe(), elem_id="export-quota")
        export_status = gr.Markdown(elem_id="export-status")
        # A Space visitor cannot reach the server's disk: the export also comes as a zip.
        download = gr.DownloadButton(
            "Download the export (.zip)", visible=False, elem_id="export-download"
        )

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

    def vote_buttons(open_: bool) -> list[gr.Button]:
        return [gr.Button(interactive=open_) for _ in votes]

    def votable(turns: list[Turn]) -> bool:
        replies = turns[-1].replies.values() if turns else ()
        return bool(replies) and all(r.update.finished and not r.update.stopped for r in replies)

    def streaming(page: gr.Request, prompt_text: str, turns: list[Turn], blind: bool = False):
        """Before the queue: Send greys, Stop lights, and the message shows in every column
        at once (its place in the queue shows over the columns until its turn comes)."""
        stops[page.session_hash] = threading.Event()
        pending = Turn(prompt_text, {}, COLUMNS, revealed=not blind)
        echo = render([*turns, pending]) if prompt_text.strip() else render(turns)
        return (
            gr.Button(interactive=False),
            gr.Button(interactive=True),
            *vote_buttons(False),
            *echo,
        )

    def streaming_regenerate(page: gr.Request, turns: list[Turn], blind: bool = False):
        last = turns[-1].prompt if turns else ""
        return streaming(page, last, turns[:-1], blind)

    def idle(turns: list[Turn]):
        return (
            gr.Button(interactive=True),
            gr.Button(interactive=False),
            *vote_buttons(votable(turns)),
        )

    def stop_streams(page: gr.Request):
        if page.session_hash in stops:
            stops[page.session_hash].set()
        return gr.Button(interactive=False)

    @gpu
    @friendly
    def converse(
        prompt_text: str,
        turns: list[Turn],
        request: MergeSpec,
        decoding_values: tuple,
        page: gr.Request,
        order: tuple[str, ...] | None = None,
    ):
        settings = decoding(*decoding_values)
        halt = stops.get(page.session_hash)  # None when called through the API alone
        partial: Turn | None = None
        sent = [None] * len(COLUMNS), [None] * len(COLUMNS)  # each chatbot's messages, title
        shown = 0.0
        for snapshot in dashboard.chat(turns, prompt_text, request, settings, stop=halt):
            replies = {column: reply for column, reply in snapshot.items() if reply}
            # A blind turn stays blind even when its shuffle happens to be the plain order.
            partial = Turn(prompt_text, replies, order or COLUMNS, revealed=order is None)
            if time.monotonic() - shown < REPAINT_S:
                continue  # the next repaint (or the final one) shows it
            shown = time.monotonic()
            yield *changes([*turns, partial], *sent), gr.skip(), gr.skip()
        turns = [*turns, partial]
        yield *render(turns), turns, ""  # whole components: API clients read value and label

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
        settings = (mode, max_new_tokens, temperature, top_p, top_k)
        yield from converse(prompt_text, turns, request, settings, page)

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
        """``choice`` is a button: a position (the model there) or tie / all bad. The vote
        names the model, and a blind turn is revealed."""
        if turns and turns[-1] == voted:
            gr.Warning("You already voted on these answers.")
            return voted, turns, *render(turns), *vote_buttons(False)
        last = turns[-1] if turns else None
        picked = last.column_at(COLUMNS.index(choice)) if last and choice in COLUMNS else choice
        dashboard.vote(turns, picked, decoding(*decoding_values))
        revealed = [*turns[:-1], replace(last, revealed=True)]
        gr.Info(f"Vote saved ({VOTE_BUTTONS[picked]}) in {dashboard.db.name}.")
        return revealed[-1], revealed, *render(revealed), *vote_buttons(False)

    @friendly
    def export(folder: str, replace_existing: bool, *values: Any):
        out = dashboard.export(folder, controls.request(values), overwrite=replace_existing)
        return f"Wrote **{out}** (weights, model card, merge_config.json)."

    chat_outputs = [*chats, turns_state, prompt]
    remerge_outputs = [controls.status, request_state]
    hidden = dict(api_visibility="undocumented")
    # Any change of λ re-merges: a drag, the arrow keys, a typed value (always_last: a drag
    # queues at most one re-merge behind the one running).
    controls.lam.change(
        remerge, controls.inputs, remerge_outputs, api_name="set_merge", trigger_mode="always_last"
    )
    groups = list(controls.groups.values())
    controls.method.change(show_params, controls.method, groups, queue=False, **hidden).then(
        remerge, controls.inputs, remerge_outputs, **hidden
    )
    controls.apply.click(remerge, controls.inputs, remerge_outputs, **hidden)
    chat_inputs = [prompt, turns_state, request_state, *decoding_inputs]
    # The page's own Send, Enter and Regenerate read the merge from the controls on screen,
    # not from the last finished re-merge: a Send pressed while a re-merge still prepares
    # asks for the merge shown (the chat sets it itself), never the previous one.
    shown_inputs = [prompt, turns_state, arena, *controls.inputs, *decoding_inputs]
    n_controls = len(controls.inputs)

    def answer_shown(
        page: gr.Request, prompt_text: str, turns: list[Turn], blind: bool, *values: Any
    ):
        request = controls.request(values[:n_controls])
        order = blind_order() if blind else None
        yield from converse(prompt_text, turns, request, values[n_controls:], page, order)

    def regenerate_shown(
        page: gr.Request, _prompt_text: str, turns: list[Turn], blind: bool, *values: Any
    ):
        if not turns:
            raise gr.Error("nothing to regenerate yet", print_exception=False)
        yield from answer_shown(page, turns[-1].prompt, turns[:-1], blind, *values)

    # API clients name the merge with /set_merge first; their /chat and /regenerate use
    # it (these buttons never show: they only carry the documented endpoints).
    api_chat = gr.Button(visible=False)
    api_regenerate = gr.Button(visible=False)
    buttons = [send, stop, *votes.values()]
    typed, kept = [prompt, turns_state, arena], [turns_state, arena]
    # Send (or Enter, or Regenerate) greys Send and lights Stop, streams, then swaps back.
    for trigger, before, echoed, handler, inputs, name in (
        (send.click, streaming, typed, answer_shown, shown_inputs, None),
        (prompt.submit, streaming, typed, answer_shown, shown_inputs, None),
        (regenerate.click, streaming_regenerate, kept, friendly(regenerate_shown),
         shown_inputs, None),
        (api_chat.click, streaming, typed[:2], answer, chat_inputs, "chat"),
        (api_regenerate.click, streaming_regenerate, kept[:1], friendly(regenerate_last),
         chat_inputs[1:], "regenerate"),
    ):  # fmt: skip
        api = dict(api_name=name) if name else hidden
        trigger(before, echoed, [*buttons, *chats], queue=False, **hidden).then(
            handler, inputs, chat_outputs, show_progress="full", **api
        ).then(idle, turns_state, buttons, queue=False, **hidden)
    stop.click(stop_streams, None, stop, queue=False, api_name="stop")
    fresh = [*chats, turns_state, *votes.values()]

    def forget():
        return *render([]), [], *vote_buttons(False)

    clear.click(lambda: (*forget(), ""), None, [*fresh, prompt], queue=False, **hidden)
    # An example is a new question, not a follow-up: it starts a fresh conversation; a
    # column's own bin icon clears the conversation too, so no column hides what is sent.
    examples.dataset.click(forget, None, fresh, queue=False, **hidden)
    for chatbot in chats:
        chatbot.clear(forget, None, fresh, queue=False, **hidden)
    for choice, button in votes.items():
        button.click(
            lambda *args, choice=choice: vote(choice, *args),
            [turns_state, voted_state, *decoding_inputs],
            [voted_state, turns_state, *chats, *votes.values()],
            api_name=f"vote_{choice}",
        )

    def arena_mode(blind: bool):
        """Blind: the buttons name positions; either way a new conversation starts."""
        names = {**VOTE_BUTTONS, **dict(zip(COLUMNS, POSITIONS, strict=True))}
        names = names if blind else VOTE_BUTTONS
        buttons = [gr.Button(value=names[choice], interactive=False) for choice in votes]
        return *render([]), [], *buttons

    arena.change(arena_mode, arena, fresh, queue=False, **hidden)
    export_button.click(
        lambda: gr.DownloadButton(visible=False), None, download, queue=False, **hidden
    ).then(
        export, [export_folder, overwrite, *controls.inputs], export_status, api_name="export"
    ).success(
        friendly(lambda folder: gr.DownloadButton(value=dashboard.archive(folder), visible=True)),
        export_folder,
        download,
        **hidden,
    )
    # Each page starts by loading what its controls show, once a shared link set them
    # (ui/linked.py).
    return ChatLink(controls, request_state, prompt, turns_state, remerge, remerge_outputs)
