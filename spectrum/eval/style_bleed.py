"""Style bleed: the thinking model's format showing where it does not belong.

ThinkingSpectrum saw merged models lose Creative Writing points to "formatting
inconsistencies": stray reasoning tags and a mix of thinking and direct styles. Each
response is checked for four signs (docs/METHODS.md, "Style bleed"); its score is how
many it shows (0–4), stored per row in ``samples.style_bleed``.

The thinking block is the text up to the first ``</think>`` (the opening ``<think>`` may
be there or in the prompt); the answer is everything after it, or the whole response
when there is no ``</think>``.
"""

from __future__ import annotations

import re

from spectrum.generate.tags import THINK_END, THINK_START

SIGNS = ("stray_tag", "unbalanced_tags", "reasoning_in_answer", "multiple_boxed")
# Phrases that open a line of a thinking trace (Qwen3 / R1 style), not of an answer.
_REASONING_LINE = re.compile(
    r"^\s*(?:okay,? so\b|okay,? let me\b|hmm+\b|wait,|but wait\b|let me (?:think|check|see)\b"
    r"|alternatively,|actually,? (?:wait|no)\b)",
    re.IGNORECASE | re.MULTILINE,
)


def split_block(text: str) -> tuple[str | None, str]:
    """(thinking block or None, answer)."""
    if THINK_END not in text:
        return None, text
    block, _, answer = text.partition(THINK_END)
    return block, answer


def signs(text: str) -> tuple[str, ...]:
    """The style-bleed signs ``text`` shows, in ``SIGNS`` order."""
    found = []
    # Allowed: one <think> opening the response and the first </think>; any other is stray.
    rest = text.lstrip()
    rest = rest[len(THINK_START) :] if rest.startswith(THINK_START) else rest
    rest = rest.replace(THINK_END, "", 1)
    if THINK_START in rest or THINK_END in rest:
        found.append("stray_tag")
    if not _balanced(text):
        found.append("unbalanced_tags")
    answer = split_block(text)[1]
    if _REASONING_LINE.search(answer):
        found.append("reasoning_in_answer")
    if answer.count("\\boxed{") > 1:
        found.append("multiple_boxed")
    return tuple(found)


_TAG = re.compile(f"{re.escape(THINK_START)}|{re.escape(THINK_END)}")


def _balanced(text: str) -> bool:
    """Every ``<think>`` closed and every ``</think>`` closing an open one, except a first
    ``</think>`` with none open (the chat template opened that block in the prompt)."""
    depth, first = 0, True
    for tag in _TAG.findall(text):
        if tag == THINK_START:
            depth += 1
        elif depth:
            depth -= 1
        elif not first:
            return False
        first = False
    return depth == 0


def style_bleed(text: str | None) -> int:
    """How many style-bleed signs ``text`` shows (0 = clean)."""
    return len(signs(text if isinstance(text, str) else ""))
