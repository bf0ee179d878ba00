"""The HTTP face of ``spectrum serve``: OpenAI's chat and completions endpoints over
``Service``, streamed as server-sent events or whole, errors as OpenAI's JSON errors.

Nothing here decides a merge or a token: the handlers read JSON, hand it to the service,
and turn the engine's deltas into OpenAI records (the reasoning split on the way).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from spectrum.errors import UserError
from spectrum.serve import reasoning
from spectrum.serve.engine import Delta
from spectrum.serve.names import UnknownModel, model_name, request_spec
from spectrum.serve.service import Busy, Closing, Job, Service, split_choice

MAX_BODY_BYTES = 1 << 20


def error_response(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _for(error: UserError) -> JSONResponse:
    if isinstance(error, UnknownModel):
        return error_response(404, str(error), "invalid_request_error", "model_not_found")
    if isinstance(error, Busy):
        return error_response(429, str(error), "rate_limit_error")
    if isinstance(error, Closing):
        return error_response(503, str(error), "server_error")
    return error_response(400, str(error), "invalid_request_error")


def create_app(service: Service, *, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has let the in-flight responses finish (or cancelled them) by now.
        await asyncio.to_thread(service.close, 10.0)

    app = FastAPI(title="spectrum serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(
                    401, "a valid API key is needed: Authorization: Bearer KEY",
                    "invalid_request_error", "invalid_api_key",
                )  # fmt: skip
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_response(
                413, f"the body is over {MAX_BODY_BYTES} bytes", "invalid_request_error"
            )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "spectrum"}
                for name in service.models()
            ],
        }

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        try:  # any name that names a merge of this pair exists, listed or not
            spec = service.dashboard.check(request_spec(name, None, None, service.effort_lams))
        except UserError as error:
            return _for(error)
        return {"id": model_name(spec), "object": "model", "created": int(time.time()),
                "owned_by": "spectrum"}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _complete(service, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(service, request, chat=False)

    return app


async def _complete(service: Service, request: Request, *, chat: bool):
    raw = bytearray()
    async for piece in request.stream():  # read up to the limit, never the whole of a flood
        raw += piece
        if len(raw) > MAX_BODY_BYTES:
            return error_response(
                413, f"the body is over {MAX_BODY_BYTES} bytes", "invalid_request_error"
            )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return error_response(400, "the body is not valid JSON", "invalid_request_error")
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[Delta] = asyncio.Queue()

    def notify(delta: Delta) -> None:  # called from an engine's worker thread
        with suppress(RuntimeError):  # a loop gone (server stopped) has no one left to tell
            loop.call_soon_threadsafe(deltas.put_nowait, delta)

    try:
        job = service.start(body, chat=chat, notify=notify)
    except UserError as error:
        return _for(error)
    headers = {"X-Spectrum-Merge": json.dumps(job.spec.to_json())}
    stream = bool(body.get("stream"))
    if not stream:
        try:
            return await _whole(job, deltas, headers)
        finally:
            job.cancel()  # a client gone mid-way frees its rows
    options = body.get("stream_options") or {}
    usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return StreamingResponse(
        _events(job, deltas, usage), media_type="text/event-stream", headers=headers
    )


async def _whole(job: Job, deltas: asyncio.Queue[Delta], headers: dict) -> JSONResponse:
    texts = [""] * len(job.rows)
    finish: list[str | None] = [None] * len(job.rows)
    tokens = [0] * len(job.rows)
    while None in finish:
        delta = await deltas.get()
        texts[delta.index] += delta.text
        tokens[delta.index] = delta.n_tokens
        finish[delta.index] = delta.finish
    if "error" in finish:
        failed = texts[finish.index("error")]
        return error_response(500, failed, "server_error")
    choices = []
    for index, (text, reason) in enumerate(zip(texts, finish, strict=True)):
        part = split_choice(text, chat=job.chat, opened=job.opened)
        key = "message" if job.chat else None
        choice = {"index": index, "finish_reason": reason}
        choice.update({key: part} if key else {**part, "logprobs": None})
        choices.append(choice)
    body = {
        "id": f"{'chatcmpl' if job.chat else 'cmpl'}-{job.id}",
        "object": "chat.completion" if job.chat else "text_completion",
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": _usage(job, sum(tokens)),
        "spectrum": job.merge_record(),
    }
    return JSONResponse(body, headers=headers)


def _usage(job: Job, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": job.prompt_tokens + completion,
    }


async def _events(job: Job, deltas: asyncio.Queue[Delta], usage: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per delta, the reasoning split per choice as it grows."""
    kind = "chat.completion.chunk" if job.chat else "text_completion"
    head = {"id": f"{'chatcmpl' if job.chat else 'cmpl'}-{job.id}", "object": kind,
            "created": job.created, "model": job.model}  # fmt: skip
    splitters = [reasoning.ReasoningStream(opened=job.opened) for _ in job.rows]
    tokens = [0] * len(job.rows)
    open_rows = set(range(len(job.rows)))

    def chunk(choices: list[dict], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    try:
        if job.chat:
            first = [{"index": i, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None} for i in open_rows]  # fmt: skip
            yield chunk(first, spectrum=job.merge_record())
        while open_rows:
            delta = await deltas.get()
            tokens[delta.index] = delta.n_tokens
            if delta.finish == "error":
                error = {"message": delta.text, "type": "server_error", "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                break
            if job.chat:
                splitter = splitters[delta.index]
                thought, answer = splitter.feed(delta.text)
                if delta.finish:
                    more_thought, more_answer = splitter.finish()
                    thought, answer = thought + more_thought, answer + more_answer
                part: dict[str, Any] = {}
                if thought:
                    part["reasoning_content"] = thought
                if answer:
                    part["content"] = answer
                choice = {"index": delta.index, "delta": part, "finish_reason": delta.finish}
            else:
                choice = {"index": delta.index, "text": delta.text, "logprobs": None,
                          "finish_reason": delta.finish}  # fmt: skip
            if delta.finish:
                open_rows.discard(delta.index)
            if job.chat and not choice["delta"] and not delta.finish:
                continue  # all of it held back (a possible tag): nothing to say yet
            yield chunk([choice])
        if usage:
            yield chunk([], usage=_usage(job, sum(tokens)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client left (or the stream ended): free the rows
