"""Streaming chat generation for the dashboard: one reply as it grows, and several at once.

``stream_reply`` runs ``model.generate`` in a worker thread and yields a ``ChatUpdate``
(text so far, reasoning/answer split at ``</think>``, token count, tokens/s) as tokens
arrive. The worker always finishes before the generator does — closing the generator
stops generation and joins the thread — so a caller that holds a lock on the model
(``LiveMerger.session()``) while iterating never lets the weights change under a
running generation.

``stream_columns`` runs several such streams side by side (threads) and yields a
snapshot of every column's latest value whenever one changes.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

if TYPE_CHECKING:
    from spectrum.generate.batch import DecodingSettings

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Re-decoding the whole reply per token is quadratic; yielding at most this often keeps
# long real-model replies cheap while the UI still looks live.
MIN_UPDATE_INTERVAL_S = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class ChatUpdate:
    """One reply so far. ``reasoning`` is the text inside <think>…</think> (may be open)."""

    text: str
    reasoning: str
    answer: str
    thinks: bool  # the reply contains </think>: the evaluation's definition of "thinking"
    n_tokens: int
    tokens_per_s: float
    finished: bool
    truncated: bool  # stopped by max_new_tokens, not by the end-of-turn token
    stopped: bool = False  # ended by the user's Stop before the model's own end
    reasoning_tokens: int = 0  # tokens up to and including </think> (so far, while open)
    reasoning_s: float = 0.0  # seconds those took


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer). Qwen3-2507 thinking models may omit the opening <think>."""
    if THINK_CLOSE in text:
        before, after = text.split(THINK_CLOSE, 1)
        return before.replace(THINK_OPEN, "", 1).strip(), after.strip()
    if text.lstrip().startswith(THINK_OPEN):
        return text.lstrip()[len(THINK_OPEN) :].strip(), ""
    return "", text.strip()


# Math the page already renders: $$…$$, $…$, \(…\), \[…\].
_MATH = re.compile(r"(\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\])", re.DOTALL)
_BOXED = "\\boxed{"


def _closing_brace(text: str, opening: int) -> int | None:
    """Index of the brace closing the one at ``opening``; None while it is still open."""
    depth = 0
    for i in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


def _wrap_boxed(text: str) -> str:
    """``text`` (no math delimiters in it) with each balanced ``\\boxed{…}`` as
    ``$\\boxed{…}$``; an unclosed one (still streaming) is left as it is."""
    out, start = [], 0
    while (found := text.find(_BOXED, start)) >= 0:
        end = _closing_brace(text, found + len(_BOXED) - 1)
        if end is None:
            break
        out += [text[start:found], "$", text[found : end + 1], "$"]
        start = end + 1
    return "".join(out) + text[start:]


def math_markdown(text: str) -> str:
    """``text`` with bare ``\boxed{…}`` answers put inside ``$…$``, so KaTeX renders them
    (models write ``\boxed{95}`` outside any math delimiters)."""
    parts = _MATH.split(text)  # odd indices: math already delimited
    return "".join(part if i % 2 else _wrap_boxed(part) for i, part in enumerate(parts))


class _TokenQueue(BaseStreamer):
    """Receives generated token ids from ``generate``; the first put is the prompt."""

    def __init__(self) -> None:
        self.tokens: queue.Queue[int | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(None)


class _StopOnEvents(StoppingCriteria):
    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


# Encoding may reconfigure a fast tokenizer's Rust backend (padding/truncation), which
# fails with "Already borrowed" when columns sharing one tokenizer encode at once.
_ENCODE_LOCK = threading.Lock()


def prompt_ids(tokenizer: Any, conversation: list[dict], device: torch.device) -> torch.Tensor:
    """The chat-template prompt for ``conversation``, as a (1, n) tensor of ids."""
    with _ENCODE_LOCK:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return encoded["input_ids"].to(device)


def generation_kwargs(settings: DecodingSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens}
    if settings.do_sample:
        kwargs.update(
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
        )
    else:
        # Greedy: unset the sampling knobs so a model's generation_config does not warn.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_reply(
    model: Any,
    tokenizer: Any,
    conversation: list[dict],
    settings: DecodingSettings,
    *,
    stop: threading.Event | None = None,
    max_time_s: float | None = None,
) -> Iterator[ChatUpdate]:
    """Generate the assistant's next turn for ``conversation``, yielding it as it grows.

    The last update has ``finished=True``. Setting ``stop`` (or closing the generator)
    ends generation early; either way the worker thread has exited when this returns.
    ``max_time_s`` ends a generation that runs longer (then reported ``truncated``).
    """
    # ``halt`` is ours (set when this generator closes); ``stop`` is the caller's and may
    # be shared with other streams, so it is only read.
    halt = threading.Event()
    events = (halt,) if stop is None else (halt, stop)
    input_ids = prompt_ids(tokenizer, conversation, model.device)
    streamer = _TokenQueue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvents(*events)]),
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    max_time=max_time_s,
                    **generation_kwargs(settings),
                )
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)
        finally:
            streamer.end()

    worker = threading.Thread(target=work, name="stream_reply", daemon=True)
    start = time.perf_counter()
    worker.start()
    ids: list[int] = []
    times: list[float] = []  # when each token arrived, for the reasoning's seconds
    clock = _ReasoningClock(tokenizer)
    ended_by_eos = False
    last_yield = 0.0
    try:
        while True:
            token = streamer.tokens.get()
            if token is None:
                break
            if token == tokenizer.eos_token_id:
                ended_by_eos = True
                continue
            ids.append(token)
            now = time.perf_counter()
            times.append(now - start)
            if now - last_yield >= MIN_UPDATE_INTERVAL_S:
                last_yield = now
                yield _update(
                    tokenizer, ids, now - start, clock, times, finished=False, truncated=False
                )
    finally:
        halt.set()
        worker.join()
    if failure:
        raise failure[0]
    n_generated = len(ids) + int(ended_by_eos)
    elapsed = time.perf_counter() - start
    out_of_time = max_time_s is not None and elapsed >= max_time_s
    truncated = not ended_by_eos and (n_generated >= settings.max_new_tokens or out_of_time)
    stopped = not (ended_by_eos or truncated) and any(event.is_set() for event in events[1:])
    yield _update(
        tokenizer, ids, elapsed, clock, times, finished=True, truncated=truncated, stopped=stopped
    )


class _ReasoningClock:
    """Where the reasoning ended: the first token whose prefix decodes with </think>.

    Found once, by bisection over prefixes (a token may carry more than the tag), the
    first time an update's text holds the tag; a reply still thinking counts every token."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.end: int | None = None

    def measure(self, ids: list[int], times: list[float], text: str) -> tuple[int, float]:
        if THINK_CLOSE not in text:
            thinking = text.lstrip().startswith(THINK_OPEN)
            return (len(ids), times[-1]) if thinking and ids else (0, 0.0)
        if self.end is None:
            low, high = 1, len(ids)
            while low < high:
                middle = (low + high) // 2
                prefix = self.tokenizer.decode(ids[:middle], skip_special_tokens=True)
                low, high = (low, middle) if THINK_CLOSE in prefix else (middle + 1, high)
            self.end = low
        return self.end, times[self.end - 1]


def _update(
    tokenizer: Any,
    ids: list[int],
    elapsed_s: float,
    clock: _ReasoningClock,
    times: list[float],
    *,
    finished: bool,
    truncated: bool,
    stopped: bool = False,
) -> ChatUpdate:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    reasoning, answer = split_reasoning(text)
    reasoning_tokens, reasoning_s = clock.measure(ids, times, text)
    return ChatUpdate(
        text=text,
        reasoning=reasoning,
        answer=answer,
        thinks=THINK_CLOSE in text,
        n_tokens=len(ids),
        tokens_per_s=len(ids) / elapsed_s if elapsed_s > 0 else 0.0,
        finished=finished,
        truncated=truncated,
        stopped=stopped,
        reasoning_tokens=reasoning_tokens,
        reasoning_s=reasoning_s,
    )


def stream_columns(
    columns: Mapping[str, Callable[[threading.Event], Iterable[T]]],
    *,
    poll_s: float = 0.1,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, T | None]]:
    """Run each column's stream in its own thread; yield {column: latest item} snapshots.

    Each factory receives a stop event that is set when the consumer stops early, or by
    the caller (``stop``: a Stop button ends every column at its next token). The last
    snapshot holds every column's final item. The first error of any column is re-raised
    after all columns have stopped.
    """
    latest: dict[str, T | None] = dict.fromkeys(columns)
    lock = threading.Lock()
    changed = threading.Event()
    stop = stop or threading.Event()
    failures: list[BaseException] = []

    def run(name: str, factory: Callable[[threading.Event], Iterable[T]]) -> None:
        try:
            for item in factory(stop):
                with lock:
                    latest[name] = item
                changed.set()
        except BaseException as error:
            failures.append(error)
            stop.set()  # one failed column ends the others: the turn is reported as failed
        finally:
            changed.set()

    threads = [
        threading.Thread(target=run, args=item, name=f"column-{item[0]}", daemon=True)
        for item in columns.items()
    ]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            changed.wait(poll_s)
            changed.clear()
            with lock:
                snapshot = dict(latest)
            yield snapshot
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    yield dict(latest)
