"""Shared wiring: errors as Gradio messages, and ZeroGPU's decorator where it exists."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from spectrum.errors import UserError

log = logging.getLogger("spectrum.ui")

try:  # Hugging Face ZeroGPU: borrow a GPU for the call. Elsewhere a no-op.
    import spaces

    gpu: Callable[[Callable], Callable] = spaces.GPU
except ImportError:  # pragma: no cover - depends on the environment

    def gpu(fn: Callable) -> Callable:
        return fn


def _as_gradio_error(error: Exception) -> gr.Error:
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, UserError):
        return gr.Error(str(error), print_exception=False)
    # Not the user's fault: the traceback goes to the server log, one line to the page.
    log.exception("dashboard handler failed")
    return gr.Error(f"{type(error).__name__}: {error}", print_exception=False)


def friendly(fn: Callable) -> Callable:
    """Run a handler (function or generator) so every error reaches the page as a gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                raise _as_gradio_error(error) from None

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise _as_gradio_error(error) from None

    return call
