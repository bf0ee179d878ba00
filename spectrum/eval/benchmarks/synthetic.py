"""The synthetic reasoning task the embedded pair is trained and measured on.

A problem is a chain of one-digit additions and subtractions on a two-digit number,
``32 + 5 - 6 + 2``; level L has L operations, so later levels need more steps. Every
running value stays within the starting ten (no carries or borrows: each step is
one-digit arithmetic a tiny model learns quickly) and so is exactly two characters wide. That
fixed-width layout matters: a tiny RoPE model learns to copy at a fixed offset quickly
and at variable offsets hardly at all, so each step of the worked trace
(`` +5=42``: one op-digit word token, ``=``, two digits) is exactly as many tokens as
the question slot it reads (`` + 5``).

The prompt is the real math-benchmark prompt (``MATH_SUFFIX`` in the registry), so the
same prompt and grading code serve the toy pair and real pairs. The instruction
sentence and ``\\boxed{`` are single word tokens of the toy tokenizer, which keeps them
cheap for the model.

Problems are deterministic from a seed. A stable hash of the question puts a fixed
share of all problems into the held-out test split; training only ever draws from the
rest (``split="train"``).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from spectrum.errors import UserError

LEVELS = (1, 2, 3, 4, 5)
PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
CHECK_HEADER = "\nCheck: "
# One problem in TEST_SHARE is held out: level 1 has 810 problems in all, which leaves
# about 270 distinct held-out ones there.
TEST_SHARE = 3
SPLITS = ("train", "test")

# Word tokens the toy tokenizer adds on top of its characters.
STEP_TOKENS = tuple(f" {op}{digit}" for op in "+-" for digit in range(1, 10))
TASK_WORDS = (PROMPT_SUFFIX.lstrip("\n"), "\\boxed{", CHECK_HEADER, *STEP_TOKENS)


@dataclass(frozen=True)
class Problem:
    start: int
    steps: tuple[tuple[str, int], ...]  # (op, digit) pairs, op in "+-"
    level: int = field(init=False)
    question: str = field(init=False)
    answer: str = field(init=False)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        question = f"{self.start}" + "".join(f" {op} {digit}" for op, digit in self.steps)
        level = len(self.steps)
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "question", question)
        object.__setattr__(self, "answer", str(running_values(self)[-1]))
        digest = hashlib.sha256(question.encode()).hexdigest()[:10]
        object.__setattr__(self, "id", f"L{level}-{digest}")

    @property
    def messages(self) -> list[dict[str, str]]:
        """The chat prompt: the user turn in the math-benchmark format."""
        return [{"role": "user", "content": self.question + PROMPT_SUFFIX}]


def running_values(problem: Problem) -> list[int]:
    values = [problem.start]
    for op, digit in problem.steps:
        values.append(values[-1] + digit if op == "+" else values[-1] - digit)
    return values


def split_of(question: str) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def random_problem(level: int, rng: random.Random) -> Problem:
    value = rng.randint(10, 99)
    start, steps = value, []
    for _ in range(level):
        units = value % 10
        choices = [("+", d) for d in range(1, 10 - units)]
        choices += [("-", d) for d in range(1, units + 1)]
        op, digit = rng.choice(choices)
        value = value + digit if op == "+" else value - digit
        steps.append((op, digit))
    return Problem(start=start, steps=tuple(steps))


def check_level(level: int) -> None:
    if level not in LEVELS:
        raise UserError(f"unknown level {level}; the synthetic task has levels {LEVELS}")


def make_problems(level: int, n: int, seed: int = 0, split: str = "test") -> list[Problem]:
    """``n`` distinct problems of ``level`` from ``split``, the same for the same seed."""
    check_level(level)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose from {SPLITS}")
    if n < 1:
        raise UserError(f"the number of problems must be at least 1, got {n}")
    rng = random.Random(f"synthetic/{split}/{level}/{seed}")
    problems: dict[str, Problem] = {}
    misses = 0
    # Level 1 has only about 300 distinct test problems: stop when new ones stop coming.
    while misses < 20_000:
        problem = random_problem(level, rng)
        if split_of(problem.question) != split or problem.question in problems:
            misses += 1
            continue
        misses = 0
        problems[problem.question] = problem
        if len(problems) == n:
            return list(problems.values())
    raise UserError(f"level {level} has fewer than {n} distinct {split} problems")


def training_problem(rng: random.Random, levels: tuple[int, ...] = LEVELS) -> Problem:
    """A random problem outside the held-out test split."""
    while True:
        problem = random_problem(rng.choice(levels), rng)
        if split_of(problem.question) == "train":
            return problem


def worked_steps(problem: Problem) -> str:
    """``32 +5=37 -6=31``: step i sits as many tokens in as the question's slot i."""
    values = running_values(problem)
    return f"{problem.start}" + "".join(
        f" {op}{digit}={value}"
        for (op, digit), value in zip(problem.steps, values[1:], strict=True)
    )


def direct_response(problem: Problem) -> str:
    return f"\\boxed{{{problem.answer}}}"


def thinking_response(problem: Problem, checks: int = 0) -> str:
    """The worked trace in ``<think>``, redone ``checks`` more times (over-thinking)."""
    trace = worked_steps(problem) + "".join(
        CHECK_HEADER + worked_steps(problem) for _ in range(checks)
    )
    return f"<think>\n{trace}\n</think>\n{direct_response(problem)}"


def strip_thinking(text: str) -> str:
    """Everything up to and including the last ``</think>`` removed, as graders do."""
    return text.rsplit("</think>", 1)[-1]


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (no nested braces in this task), or None."""
    matches = _BOXED.findall(text)
    return matches[-1].strip() if matches else None


def thinks(text: str) -> bool:
    return "</think>" in text


def is_correct(response: str, answer: str) -> bool:
    """Exact match of the boxed answer after the reasoning is stripped."""
    return extract_boxed(strip_thinking(response)) == answer
