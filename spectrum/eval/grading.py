"""Grading responses: strip the reasoning, extract the final answer, compare with the gold.

Graders, chosen by benchmark: ``exact`` (the synthetic task: the last ``\\boxed{}``
must equal the gold string), ``math`` (HF math-verify, for AIME/HMMT) and ``choice``
(GPQA: an answer letter); ``judge`` benchmarks have no gold and are scored by a judge
model instead (``spectrum.eval.creative``). Every grader sees only the text after the
last ``</think>``.
"""

from __future__ import annotations

import random
import re
import string
import threading
from dataclasses import dataclass

from spectrum.generate.tags import THINK_END

GRADERS = ("exact", "math", "choice", "judge")
MATH_TIMEOUT_S = 10.0
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Grade:
    extracted: str | None
    correct: bool | None  # None: no gold to compare with (a judge scores the row)


def strip_thinking(text: str) -> str:
    """Everything up to and including the last ``</think>`` removed."""
    return text.rpartition(THINK_END)[2]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced; None when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None


def grade_exact(response: str, gold: str) -> Grade:
    answer = last_boxed(strip_thinking(response))
    return Grade(answer, answer is not None and " ".join(answer.split()) == " ".join(gold.split()))


def _math_verify(response: str, gold: str) -> Grade:
    from math_verify import parse, verify

    # math-verify's own timeouts use signal.alarm, which raises outside the main thread;
    # they are switched off here and time is bounded by grade_math instead.
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    pred_parsed = parse(response, parsing_timeout=None)
    extracted = str(pred_parsed[-1]) if pred_parsed else None
    correct = bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=None)
    return Grade(extracted, correct)


def grade_math(response: str, gold: str, *, timeout_s: float = MATH_TIMEOUT_S) -> Grade:
    """math-verify in a daemon thread: works from any thread, and a pathological expression
    costs at most ``timeout_s`` (then it counts as wrong)."""
    text = strip_thinking(response)
    result: list[Grade] = []
    worker = threading.Thread(target=lambda: result.append(_math_verify(text, gold)), daemon=True)
    worker.start()
    worker.join(timeout_s)
    return result[0] if result else Grade(None, False)


def shuffle_choices(
    correct: str, incorrect: list[str], *, seed: int, problem_id: str
) -> tuple[list[str], str]:
    """The choices in a seeded order (same seed and problem → same order) and the letter of
    the correct one."""
    choices = [correct, *incorrect]
    order = list(range(len(choices)))
    random.Random(f"{seed}:{problem_id}").shuffle(order)
    shuffled = [choices[i] for i in order]
    return shuffled, LETTERS[order.index(0)]


_LETTER_PATTERNS = (
    re.compile(r"\\boxed\{\s*\(?([A-Z])\)?\s*\}"),
    re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?\**([A-Z])\b", re.IGNORECASE),
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"\b([A-Z])\b"),
)


def extract_letter(response: str, n_choices: int = 4) -> str | None:
    """The answer letter: a boxed letter first, then 'answer: X', then the last lone letter."""
    text = strip_thinking(response)
    valid = LETTERS[:n_choices]
    for pattern in _LETTER_PATTERNS:
        found = [m.upper() for m in pattern.findall(text) if m.upper() in valid]
        if found:
            return found[-1]
    return None


def grade_choice(response: str, gold_letter: str, n_choices: int = 4) -> Grade:
    letter = extract_letter(response, n_choices)
    return Grade(letter, letter == gold_letter)


def grade(kind: str, response: str, gold: str) -> Grade:
    if kind == "exact":
        return grade_exact(response, gold)
    if kind == "math":
        return grade_math(response, gold)
    if kind == "choice":
        return grade_choice(response, gold)
    if kind == "judge":  # scored by a judge model when the sweep stores the row
        return Grade(None, None)
    raise ValueError(f"unknown grader {kind!r}; known: {', '.join(GRADERS)}")
