"""Model cards of the embedded pair: how each model was made, and its measured table."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from spectrum.eval.benchmarks import synthetic as task

if TYPE_CHECKING:
    from spectrum.toy.measure import Row
    from spectrum.toy.train import Recipe

ROLES = {
    "base": "the shared base: pretrained from scratch on chat-formatted task text, a mix of "
    "direct answers and worked traces with 0-2 re-checks (loss on the assistant turn only)",
    "direct": "the direct child: the base fine-tuned to answer at once with `\\boxed{…}`",
    "thinking_concise": "the thinking child's intermediate checkpoint: the base fine-tuned on "
    "concise traces (`<think>` with the worked steps once, then `\\boxed{…}`)",
}


def checks_label(checks: tuple[int, int]) -> str:
    """``2`` for a fixed count, ``0-3`` for a range (the ``--thinking-checks`` syntax)."""
    low, high = checks
    return f"{low}" if low == high else f"{low}-{high}"


def checks_text(checks: tuple[int, int]) -> str:
    low, high = checks
    if low == high:
        return f"redo the whole computation {low} times (`Check: …`) before answering"
    return (
        f"redo the whole computation a random {low}-{high} times (`Check: …`, the count "
        "drawn per batch) before answering, so how long it keeps checking is the model's "
        "own sampled choice"
    )


def role(name: str, recipe: Recipe) -> str:
    if name != "thinking":
        return ROLES[name]
    return (
        "the thinking child: `thinking_concise` fine-tuned further on over-verbose traces "
        "that " + checks_text(recipe.verbose_checks)
    )


def training_card(name: str, recipe: Recipe, seed: int) -> str:
    example = task.make_problems(3, 1, seed=0, split="train")[0]
    response = (
        task.direct_response(example)
        if name == "direct"
        else task.thinking_response(
            example, checks=recipe.verbose_checks[1] if name == "thinking" else 0
        )
    )
    verbose_checks = checks_label(recipe.verbose_checks)
    return f"""---
license: apache-2.0
library_name: transformers
tags: [qwen3, thinking-spectrum, toy]
---
# Thinking Spectrum embedded pair: `{name}`

A tiny Qwen3 (Qwen3ForCausalLM, {recipe.size.num_hidden_layers} layers, hidden size \
{recipe.size.hidden_size}, character-level tokenizer with Qwen3's chat and `<think>` tokens): \
{role(name, recipe)}.

It solves the project's synthetic task (`spectrum.eval.benchmarks.synthetic`): chains of one-digit
additions and
subtractions on a two-digit number, level L = L operations, answer in `\\boxed{{}}`. It is
trained only on problems outside the held-out test split.

Example (prompt in the math-benchmark format, then this model's kind of answer):

```
{example.messages[0]["content"]}
```
```
{response}
```

Made by `spectrum toy train` with seed {seed} (recipe in `spectrum/toy/train.py`: base \
{recipe.base_steps} steps, direct {recipe.direct_steps}, thinking {recipe.concise_steps} concise + \
{recipe.verbose_steps} verbose with {verbose_checks} re-checks; base traces with up to \
{recipe.base_max_checks} re-checks; \
batch {recipe.batch_size}; AdamW, lr {recipe.lr} for the base and {recipe.finetune_lr} for the \
children). Load it with \
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
"""


def markdown_table(rows: list[Row]) -> str:
    """One line per λ; per level: accuracy · Token#N · Think#R."""
    levels = sorted({row.level for row in rows})
    by_key = {(row.lam, row.level): row for row in rows}
    head = "| λ | " + " | ".join(f"level {level}" for level in levels) + " |"
    lines = [head, "|---" * (len(levels) + 1) + "|"]
    for lam in sorted({row.lam for row in rows}):
        cells = []
        for level in levels:
            row = by_key[(lam, level)]
            cells.append(f"{row.accuracy:.2f} · {row.tokens:.1f} · {row.think_rate:.2f}")
        lines.append(f"| {lam:g} | " + " | ".join(cells) + " |")
    n = rows[0].n
    note = f"Cells: accuracy · Token#N · Think#R, greedy, {n} held-out problems per level."
    return "\n".join(lines) + "\n\n" + note


def write_rows(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps([asdict(row) for row in rows], indent=1) + "\n")


def measure_command(args: argparse.Namespace) -> str:
    return (
        f"spectrum toy measure --pair {args.pair} --thinking {args.thinking} "
        f"--lams {args.lams} --n {args.n} --seed {args.seed} --levels {args.levels}"
    )


def insert_table(readme: Path, table: str, command: str, thinking: str) -> None:
    """Put (or replace) the measured section for merges of direct with ``thinking``."""
    body = (
        f"## Measured: linear merges of `direct` (λ=0) and `{thinking}` (λ=1)\n\n"
        f"{table}\n\nRegenerate with `{command}`."
    )
    insert_section(readme, f"table:{thinking}", body)


def insert_section(readme: Path, key: str, body: str) -> None:
    """Put (or replace) the text between ``<!-- key -->`` and ``<!-- /key -->``."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    section = f"{start}\n{body}\n{end}"
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text)


def summary(rows: list[Row]) -> str:
    """The transition, per-level switch-on λ and any Pareto point, read off the rows."""
    lams = sorted({row.lam for row in rows})
    levels = sorted({row.level for row in rows})
    by_key = {(row.lam, row.level): row for row in rows}

    def mean(lam: float, field: str) -> float:
        return sum(getattr(by_key[(lam, level)], field) for level in levels) / len(levels)

    lines, top = [], lams[-1]
    below = [lam for lam in lams if mean(lam, "think_rate") < 0.1]
    above = [lam for lam in lams if mean(lam, "think_rate") > 0.9]
    if below and above:
        low, high = max(below), min(lam for lam in above if lam > max(below))
        lines.append(f"Think#R goes from < 10 % (λ={low:g}) to > 90 % (λ={high:g}).")
    for level in levels:
        first, last = by_key[(lams[0], level)].accuracy, by_key[(lams[-1], level)].accuracy
        text = f"Level {level}: accuracy {first:.2f} at λ={lams[0]:g}, {last:.2f} at λ={top:g}"
        halfway = (first + last) / 2
        if last > first + 0.1:
            on = next(lam for lam in lams if by_key[(lam, level)].accuracy >= halfway)
            text += f"; half-way ({halfway:.2f}) first reached at λ={on:g}"
        thinking_from = next((lam for lam in lams if by_key[(lam, level)].think_rate >= 0.5), None)
        if thinking_from is not None:
            text += f"; Think#R ≥ 0.5 from λ={thinking_from:g}"
        lines.append(text + ".")
    better = [
        lam
        for lam in lams[:-1]
        if mean(lam, "accuracy") >= mean(top, "accuracy")
        and mean(lam, "tokens") < mean(top, "tokens")
    ]
    reference = (
        f"λ={top:g} (accuracy {mean(top, 'accuracy'):.3f}, {mean(top, 'tokens'):.1f} tokens)"
    )
    if better:
        lam = min(better, key=lambda value: mean(value, "tokens"))
        lines.append(
            f"Pareto improvement: λ={lam:g} has mean accuracy {mean(lam, 'accuracy'):.3f} with "
            f"{mean(lam, 'tokens'):.1f} tokens vs {reference}."
        )
    else:
        lines.append(f"No λ < {top:g} is at least as accurate as {reference} with fewer tokens.")
    return "\n".join(f"- {line}" for line in lines)
