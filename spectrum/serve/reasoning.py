"""Thinking and answer apart, for whole replies and for stream deltas (docs/SERVE.md).

The rule is the one of vLLM's ``qwen3`` reasoning parser in its template-agnostic form:
a ``<think>`` the model generated is dropped; text before ``</think>`` is reasoning, text
after it is the answer (its leading newlines dropped, as Qwen3's template drops them when
the reply comes back as history). A reply without ``</think>`` is reasoning if a thinking
block was open (a truncated thought) and answer otherwise (the direct model never thinks).
Whether the block opens in the prompt (Qwen3-Thinking-2507 templates) is the caller's to
say (``opened``), from the prompt the template wrote.

``ReasoningStream`` gives the same split a piece at a time: fed the text deltas of one
reply, it returns (reasoning, content) deltas whose concatenations equal ``split`` of the
whole reply. It holds back text that may be the start of a tag until the next piece says.
"""

from __future__ import annotations

from spectrum.generate.tags import THINK_END, THINK_START


def split(text: str, *, opened: bool = False) -> tuple[str | None, str | None]:
    """(reasoning, content) of a whole reply; None where a part is empty. ``opened``: the
    prompt ended inside an open thinking block."""
    stream = ReasoningStream(opened=opened)
    reasoning, content = stream.feed(text)
    more_reasoning, more_content = stream.finish()
    return (reasoning + more_reasoning) or None, (content + more_content) or None


def _tag_prefix_at_end(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningStream:
    """Incremental split of one reply: ``feed(delta)`` → (reasoning, content) deltas."""

    def __init__(self, *, opened: bool = False) -> None:
        self._held = ""  # text not yet classified (a possible tag start)
        # start → thinking → answer, or start → answer; a prompt whose template already
        # opened <think> (Qwen3-Thinking-2507) starts inside the thought.
        self._state = "thinking" if opened else "start"
        self._answer_started = False

    def feed(self, delta: str) -> tuple[str, str]:
        self._held += delta
        reasoning, content = [], []
        while self._held:
            if self._state == "start":
                stripped = self._held.lstrip()
                if THINK_START.startswith(stripped) and len(stripped) < len(THINK_START):
                    break  # "", " <thi": cannot tell yet
                if stripped.startswith(THINK_START):
                    self._held = stripped[len(THINK_START) :]
                    self._state = "thinking"
                else:
                    self._state = "answer"
                continue
            if self._state == "thinking":
                before, found, after = self._held.partition(THINK_END)
                if found:
                    reasoning.append(before)
                    self._held, self._state = after, "answer"
                    continue
                keep = _tag_prefix_at_end(self._held, THINK_END)
                reasoning.append(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep :]
                break
            if not self._answer_started:
                self._held = self._held.lstrip("\n")
                if not self._held:
                    break
                self._answer_started = True
            content.append(self._held)
            self._held = ""
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """What is still held back once the reply has ended."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, ""
        if self._state == "start" and held.strip():
            if held.lstrip().startswith(THINK_START):
                return held.lstrip()[len(THINK_START) :], ""
            return "", held
        if self._state == "answer" and not self._answer_started:
            return "", ""
        return "", held
