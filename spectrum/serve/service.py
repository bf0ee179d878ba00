"""The request logic of ``spectrum serve``, on the dashboard's ``Dashboard``.

The dashboard already holds what a server needs: the validated pair, the spectrum model,
the live merger (loaded on first need), the chat template, merge checks against the pair
and the page's bounds (``ChatLimits``, context fits). This module adds only what an
OpenAI-style request needs on top: reading its fields into a merge and decoding settings,
one engine row per choice, and the response records. HTTP lives in ``spectrum.serve.api``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from spectrum.dashboard import Dashboard
from spectrum.errors import UserError
from spectrum.generate.batch import DecodingSettings, chat_prompts
from spectrum.generate.tags import THINK_START
from spectrum.live.spectrum_generate import unit_seed
from spectrum.merge.spec import MergeSpec
from spectrum.serve import reasoning
from spectrum.serve.engine import Delta, MergerEngine, Row, SpectrumEngine
from spectrum.serve.names import DEFAULT_EFFORT_LAMS, model_name, request_spec

MAX_CHOICES = 8
MAX_STOPS = 4
# Request fields a client may send that this server cannot honour: refused, never ignored.
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "tool_choice", "logit_bias")


class Busy(UserError):
    """More rows queued than the server takes (answered 429)."""


class Closing(UserError):
    """The server is shutting down (answered 503)."""


@dataclass(frozen=True)
class ServeLimits:
    """What the server takes at once: rows decoded together, rows waiting."""

    max_batch: int = 16
    max_queue: int = 256


@dataclass
class Job:
    """One accepted request: its merge, prompt, rows and what the response says."""

    spec: MergeSpec
    served_by: str
    chat: bool
    prompt_tokens: int
    opened: bool  # the template opened a thinking block in the prompt
    rows: list[Row]
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self) -> str:
        return model_name(self.spec)

    def cancel(self) -> None:
        for row in self.rows:
            row.cancelled.set()

    def merge_record(self) -> dict[str, Any]:
        """What every response carries: the merge that produced it."""
        return dict(merge=self.spec.to_json(), label=self.spec.label(), served_by=self.served_by)


class Service:
    """Requests in, engine rows out; one instance per server."""

    def __init__(
        self,
        dashboard: Dashboard,
        *,
        effort_lams: dict[str, float] | None = None,
        limits: ServeLimits = ServeLimits(),
    ) -> None:
        self.dashboard = dashboard
        self.effort_lams = dict(effort_lams or DEFAULT_EFFORT_LAMS)
        self.limits = limits
        # The direct parent's tokenizer encodes every prompt (the parents share one
        # vocabulary); the chat template is the merge's own (``Dashboard.template_tokenizer``).
        self.tokenizer = dashboard.tokenizers["direct"]
        context = dashboard.context_length
        self.spectrum_engine = None
        if dashboard.spectrum is not None:
            self.spectrum_engine = SpectrumEngine(
                dashboard.spectrum, max_batch=limits.max_batch, context=context
            )
        self.merger_engine = MergerEngine(
            lambda: dashboard.merger, self.tokenizer, max_batch=limits.max_batch, context=context
        )
        self._closing = False
        self._encoding = threading.Lock()

    def models(self) -> list[str]:
        """Names /v1/models lists: the parents and every method this pair runs (a bare
        method runs at the medium effort's λ; ``METHOD@LAM`` names any λ)."""
        return ["direct", "thinking", *self.dashboard.method_names()]

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests; let the engines finish the rows they hold."""
        self._closing = True
        for engine in (self.spectrum_engine, self.merger_engine):
            if engine is not None:
                engine.close(timeout)

    def start(self, body: Any, *, chat: bool, notify: Callable[[Delta], None]) -> Job:
        """Check a request, queue its rows; ``notify`` hears every row's deltas."""
        if self._closing:
            raise Closing("the server is shutting down")
        if not isinstance(body, dict):
            raise UserError("the request body must be a JSON object")
        for name in UNSUPPORTED:
            if body.get(name) not in (None, False, [], {}):
                raise UserError(f"{name} is not supported by spectrum serve")
        spec = request_spec(
            body.get("model"), body.get("lam"), body.get("reasoning_effort"), self.effort_lams
        )
        spec = self.dashboard.check(spec)
        n = _integer(body, "n", 1, 1, MAX_CHOICES)
        stops = _stops(body.get("stop"))
        text = self._prompt_text(body, chat, spec)
        ids = self._encode(text)
        settings = self._settings(body, spec, len(ids))
        seed = _integer(body, "seed", None, 0, 2**63 - 1)
        seed = secrets.randbits(63) if seed is None else seed
        engine = self._engine_for(spec)
        if engine.queued() + n > self.limits.max_queue:
            raise Busy(f"{engine.queued()} choices are waiting; try again shortly")
        deadline = time.monotonic() + self.dashboard.limits.max_seconds
        rows = [
            Row(ids, settings, unit_seed(seed, index), spec, stops, deadline, notify, index)
            for index in range(n)
        ]
        served_by = self.dashboard.served_by(spec)
        opened = chat and text.rstrip().endswith(THINK_START)
        job = Job(spec, served_by, chat, len(ids), opened, rows)
        engine.submit(rows)
        return job

    def _engine_for(self, spec: MergeSpec):
        spectrum = self.dashboard.spectrum
        if self.spectrum_engine is not None and spectrum.serves(spec):
            return self.spectrum_engine
        return self.merger_engine

    def _prompt_text(self, body: dict, chat: bool, spec: MergeSpec) -> str:
        if chat:
            conversation = _messages(body.get("messages"))
            template = self.dashboard.template_tokenizer(spec).chat_template
            return chat_prompts(self.tokenizer, [conversation], None, template)[0]
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise UserError("prompt must be one non-empty string")
        return prompt

    def _encode(self, text: str) -> list[int]:
        # Handlers of several threads share one fast tokenizer, which is not reentrant.
        with self._encoding:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("the prompt encodes to no tokens")
        return ids

    def _settings(self, body: dict, spec: MergeSpec, prompt_tokens: int) -> DecodingSettings:
        """The request's decoding: λ's defaults (the study's per-model settings), then the
        fields the request gives; checked against the page's limits and the context."""
        limit = self.dashboard.limits.max_new_tokens
        context = self.dashboard.context_length
        room = context - prompt_tokens
        if room < 1:
            raise UserError(f"the prompt takes {prompt_tokens} tokens: the context is {context}")
        given = body.get("max_completion_tokens", body.get("max_tokens"))
        max_new = (
            min(limit, room)
            if given is None
            else _integer({"max_tokens": given}, "max_tokens", None, 1, limit)
        )
        if max_new > room:
            raise UserError(
                f"the context is {context} tokens: the prompt takes {prompt_tokens} and "
                f"max_tokens asks for {max_new} more"
            )
        settings = DecodingSettings.for_lam(spec.lam, max_new_tokens=max_new)
        temperature = _number(body, "temperature", 0.0, 2.0)
        top_p = _number(body, "top_p", 0.0, 1.0)
        top_k = _integer(body, "top_k", None, -1, 1 << 20)
        if top_p == 0.0:
            raise UserError("top_p must be above 0")
        if temperature == 0.0:
            return replace(settings, do_sample=False)
        overrides = dict(temperature=temperature, top_p=top_p,
                         top_k=None if top_k is None else max(top_k, 0))  # fmt: skip
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def split_choice(text: str, *, chat: bool, opened: bool) -> dict[str, str | None]:
    """A chat message's content and reasoning_content (a completion's text as is)."""
    if not chat:
        return {"text": text}
    thought, answer = reasoning.split(text, opened=opened)
    return {"role": "assistant", "content": answer or "", "reasoning_content": thought}


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in (
            "system", "developer", "user", "assistant",
        ):  # fmt: skip
            raise UserError(f"messages[{i}] needs a role: system, user or assistant")
        content = message.get("content")
        if isinstance(content, list):  # the parts form: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise UserError(f"messages[{i}].content: only text parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise UserError(f"messages[{i}].content must be a string")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": content})
    return out


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise UserError(f"stop must be a string or a list of at most {MAX_STOPS} strings")
    return tuple(stops)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return value


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UserError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")
    return float(value)
