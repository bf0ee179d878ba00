"""Creative writing scored by a judge, in the layout of EQ-Bench Creative Writing v3.

The prompts file is one JSON object keyed by prompt id; each entry has ``writing_prompt``
(with a ``<SEED>`` placeholder), ``seed_modifiers`` (a list of strings) and optionally
``title`` and ``category``. Each prompt runs ``ITERATIONS`` times, iteration ``i`` with
seed modifier ``i`` (cycling), as v3 does: 32 prompts × 3 = 96 pieces.

A judge model behind any OpenAI-compatible ``/v1/chat/completions`` endpoint reads each
answer (the text after the thinking block) with the rubric prompt and writes one
``Criterion: score`` line per criterion on a 0–20 scale. ``parse_scores`` reads those
lines; a piece's score is the mean over the criteria it found, negative criteria
inverted (20 − s) so that higher is always better (docs/METHODS.md, "Creative writing").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from spectrum.errors import UserError

ITERATIONS = 3
SEED_MARK = "<SEED>"
SCORE_MIN, SCORE_MAX = 0.0, 20.0
JUDGE_MAX_TOKENS = 1000
JUDGE_TIMEOUT_S = 600.0
JUDGE_THREADS = 4
JUDGE_KEY_ENV = "SPECTRUM_JUDGE_API_KEY"

# The rubric's criteria, in the order the judge is asked for them (v3's list).
CRITERIA = (
    "Adherence to Instructions",
    "Believable Character Actions",
    "Nuanced Characters",
    "Consistent Voice/Tone of Writing",
    "Imagery and Descriptive Quality",
    "Elegant Prose",
    "Emotionally Engaging",
    "Emotionally Complex",
    "Coherent",
    "Meandering",
    "Weak Dialogue",
    "Tell-Don't-Show",
    "Unsurprising or Uncreative",
    "Amateurish",
    "Purple Prose",
    "Overwrought",
    "Incongruent Ending Positivity",
    "Unearned Transformations",
    "Well-earned Lightness or Darkness",
    "Sentences Flow Naturally",
    "Overall Reader Engagement",
    "Overall Impression",
)
# Criteria where a high score is a fault: inverted before averaging.
NEGATIVE = frozenset(
    {
        "Meandering",
        "Weak Dialogue",
        "Tell-Don't-Show",
        "Unsurprising or Uncreative",
        "Amateurish",
        "Purple Prose",
        "Overwrought",
        "Incongruent Ending Positivity",
        "Unearned Transformations",
    }
)

RUBRIC = "\n".join(
    (
        "You judge creative writing. Read the writing prompt and the piece a model wrote for",
        "it, then score the piece on each criterion below from 0 to 20 (20 is a masterpiece).",
        "",
        "<prompt>",
        "{prompt}",
        "</prompt>",
        "",
        "<piece>",
        "{piece}",
        "</piece>",
        "",
        "Notes:",
        "- Everything inside <piece> was written by the model under test; ignore any comments",
        "  it adds about its own piece after the story ends.",
        "- Leave out a criterion that does not apply to the piece (for example dialogue",
        "  criteria when there is no dialogue).",
        "- For these criteria a lower score is better: {negative}.",
        "- Be a critic: name weaknesses and amateurish writing plainly.",
        "- No markdown. First write your analysis, then the scores in exactly this form, one",
        "  per line, with the criterion names written exactly as listed:",
        "",
        "[Analysis]",
        "your analysis",
        "",
        "[Scores]",
        "Criterion name: score",
        "",
        "Criteria:",
        "{criteria}",
    )
)


@dataclass(frozen=True)
class RubricScores:
    """What a judge reply held: the scores of known criteria (as the judge wrote them),
    the criteria it left out, and lines it gave for a criterion that could not count."""

    scores: dict[str, float]
    missing: tuple[str, ...]
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def piece_score(self) -> float | None:
        """Mean over the found criteria, negative ones as 20 − s; None when none was found."""
        if not self.scores:
            return None
        values = [SCORE_MAX - s if c in NEGATIVE else s for c, s in self.scores.items()]
        return sum(values) / len(values)


@dataclass(frozen=True)
class Judged:
    """One piece's judgement as stored: score (None on failure), the per-criterion scores,
    the judge's raw reply and why it could not be scored (None when it was)."""

    score: float | None
    scores: dict[str, float]
    text: str | None
    error: str | None


def _normal(name: str) -> str:
    return " ".join(name.replace("’", "'").lower().split())


_BY_NAME = {_normal(c): c for c in CRITERIA}
# "Name: 14", "Name: [14]", "Name: 14/20", "Name - Score 14" after markdown is removed.
_LINE = re.compile(
    r"^\s*(?P<name>[^:\n]+?)\s*(?::|：|\s-\s)\s*(?:score\s*)?\[?\s*(?P<value>[-+]?\d+(?:\.\d+)?)"
    r"\s*\]?\s*(?:/\s*20(?:\.0)?)?",
    re.IGNORECASE,
)


def parse_scores(reply: str) -> RubricScores:
    """The criterion scores in a judge ``reply``; never raises.

    Only the text after the last ``[Scores]`` heading is read when there is one (so an
    analysis that quotes numbers does not count). Unknown names and other text are
    ignored; a value outside 0–20 is rejected (recorded, not used); a criterion given
    twice keeps its last value.
    """
    head = reply.lower().rfind("[scores]")
    section = reply[head + len("[scores]") :] if head >= 0 else reply
    scores: dict[str, float] = {}
    rejected: dict[str, str] = {}
    for line in section.splitlines():
        found = _LINE.match(line.replace("*", "").replace("#", "").lstrip(" -•\t"))
        if not found:
            continue
        name = _BY_NAME.get(_normal(found["name"]))
        if name is None:
            continue
        value = float(found["value"])
        if SCORE_MIN <= value <= SCORE_MAX:
            scores[name] = value
            rejected.pop(name, None)
        else:
            rejected[name] = found["value"]
            scores.pop(name, None)
    missing = tuple(c for c in CRITERIA if c not in scores)
    return RubricScores(scores, missing, rejected)


def judge_reply(reply: str | None) -> Judged:
    """A reply turned into what a row stores: a parse failure is recorded, not raised."""
    if not reply or not reply.strip():
        return Judged(None, {}, reply, "the judge's reply was empty")
    found = parse_scores(reply)
    if found.piece_score is None:
        why = "no 'Criterion: score' line with a known criterion and a score in 0–20"
        if found.rejected:
            why = f"every score out of 0–20 ({', '.join(found.rejected)})"
        return Judged(None, {}, reply, f"unparsable judge reply: {why}")
    return Judged(found.piece_score, found.scores, reply, None)


def rubric_prompt(prompt: str, piece: str) -> str:
    return RUBRIC.format(
        prompt=prompt,
        piece=piece,
        negative=", ".join(c for c in CRITERIA if c in NEGATIVE),
        criteria="\n".join(f"- {c}" for c in CRITERIA),
    )


@dataclass(frozen=True)
class Judge:
    """An OpenAI-compatible chat endpoint and the model it serves as the judge."""

    url: str  # the full /v1/chat/completions address
    model: str
    max_tokens: int = JUDGE_MAX_TOKENS
    timeout_s: float = JUDGE_TIMEOUT_S

    @classmethod
    def parse(cls, text: str, *, max_tokens: int = JUDGE_MAX_TOKENS) -> Judge:
        """``URL,MODEL``: URL is the server (``http://host:port``), its ``/v1`` or the
        chat completions address itself."""
        url, comma, model = text.rpartition(",")
        url, model = url.strip(), model.strip()
        if not comma or not url or not model:
            raise UserError(f"--judge {text!r}: expected URL,MODEL (e.g. http://127.0.0.1:8000,m)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"--judge {text!r}: the URL must start with http:// or https://")
        if max_tokens < 1:
            raise UserError(f"--judge-max-tokens must be at least 1, not {max_tokens}")
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path = (path if path.endswith("/v1") else path + "/v1") + "/chat/completions"
        return cls(parts._replace(path=path).geturl(), model, max_tokens)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(JUDGE_KEY_ENV)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def check(self) -> None:
        """Refuse, before any work, an endpoint that does not answer at all."""
        models = self.url.removesuffix("/chat/completions") + "/models"
        try:
            answer = httpx.get(models, headers=self._headers(), timeout=30)
        except httpx.HTTPError as error:
            raise UserError(f"the judge at {self.url} does not answer: {_why(error)}") from None
        if answer.status_code in (401, 403):
            raise UserError(
                f"the judge at {self.url} refused the request ({answer.status_code}); "
                f"set {JUDGE_KEY_ENV}"
            )

    def ask(self, prompt: str) -> str:
        """The judge's reply text; raises ``JudgeError`` on any transport or HTTP failure."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        try:
            answer = httpx.post(
                self.url, json=body, headers=self._headers(), timeout=self.timeout_s
            )
        except httpx.HTTPError as error:
            raise JudgeError(_why(error)) from None
        if answer.status_code != 200:
            raise JudgeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
        try:
            return answer.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"not a chat completion: {answer.text[:200]}") from None

    def judge(self, prompt: str, piece: str) -> Judged:
        """One piece judged; a failed call or an unparsable reply is recorded in ``error``."""
        try:
            reply = self.ask(rubric_prompt(prompt, piece))
        except JudgeError as error:
            return Judged(None, {}, None, f"judge call failed: {error}")
        return judge_reply(reply)

    def judge_all(self, pairs: Sequence[tuple[str, str]]) -> list[Judged]:
        """(prompt, piece) pairs judged a few at a time (a judge serves several at once)."""
        with ThreadPoolExecutor(JUDGE_THREADS) as pool:
            return list(pool.map(lambda pair: self.judge(*pair), pairs))


class JudgeError(Exception):
    """A judge call that brought back no reply."""


def _why(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@dataclass(frozen=True)
class WritingPrompt:
    id: str  # "<prompt id>#<iteration>"
    prompt: str  # the writing prompt with its seed modifier in place


def read_prompts(path: Path, iterations: int = ITERATIONS) -> list[WritingPrompt]:
    """The prompts of a v3-layout file, each ``iterations`` times with its modifiers."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"cannot read creative writing prompts {path}: {_why(error)}") from None
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"{path}: expected a JSON object of prompts keyed by id")
    found = []
    for key, entry in entries.items():
        prompt, modifiers = _checked(path, key, entry)
        for i in range(iterations):
            modifier = modifiers[i % len(modifiers)]
            found.append(WritingPrompt(f"{key}#{i + 1}", prompt.replace(SEED_MARK, modifier)))
    return found


def _checked(path: Path, key: str, entry) -> tuple[str, list[str]]:
    where = f"{path}: prompt {key!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not an object")
    prompt, modifiers = entry.get("writing_prompt"), entry.get("seed_modifiers")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where} has no writing_prompt text")
    if SEED_MARK not in prompt:
        raise UserError(f"{where}: its writing_prompt has no {SEED_MARK} placeholder")
    if not isinstance(modifiers, list) or not modifiers:
        raise UserError(f"{where} has no seed_modifiers list")
    if not all(isinstance(m, str) for m in modifiers):
        raise UserError(f"{where}: every seed modifier must be a string")
    return prompt, modifiers


def judged_columns(judged: Judged) -> dict:
    """The ``samples`` columns of one judgement."""
    return dict(
        judge_score=judged.score,
        judge_scores=json.dumps(judged.scores, sort_keys=True) if judged.scores else None,
        judge_text=judged.text,
        judge_error=judged.error,
    )
