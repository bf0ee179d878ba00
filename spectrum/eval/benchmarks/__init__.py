"""The benchmark registry: problems, prompts and graders of every benchmark the sweep runs.

Real benchmarks load through ``datasets`` by hub id (the ids public harnesses use), or
from a local JSONL/Parquet file with the same columns as the hub dataset (docs/SCHEMA.md,
"Local benchmark files"). ``synthetic`` is the embedded pair's task (``synthetic.py`` here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spectrum.errors import UserError
from spectrum.eval.grading import LETTERS, shuffle_choices

MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
SYNTHETIC_DEFAULT_PER_LEVEL = 50
CHOICE_SUFFIX = (
    "\nPlease reason step by step, and put the letter of your final answer within \\boxed{}."
)


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    gold: str
    level: int | None = None

    def conversation(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class Benchmark:
    name: str
    grader: str
    hub: tuple[tuple[str, str | None, str], ...]  # (dataset id, config, split), tried in order
    row_to_problem: Callable[[dict, int, int], Problem] | None  # (row, index, seed)
    summary: str
    # A reader of the benchmark's own local file layout, (path, seed) → problems; None:
    # the JSONL/Parquet rows go through ``row_to_problem``.
    read_file: Callable[[Path, int], list[Problem]] | None = None


def _first(row: dict, *keys: str):
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise UserError(f"benchmark row has none of the columns {', '.join(keys)}")


def _row_id(row: dict, index: int) -> str:
    for key in ("id", "ID", "problem_idx", "Record ID"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def math_problem(row: dict, index: int, seed: int) -> Problem:
    question = str(_first(row, "problem", "question", "Problem", "Question"))
    answer = str(_first(row, "answer", "Answer"))
    return Problem(_row_id(row, index), question + MATH_SUFFIX, answer)


def gpqa_problem(row: dict, index: int, seed: int) -> Problem:
    problem_id = _row_id(row, index)
    correct = str(_first(row, "Correct Answer", "correct_answer")).strip()
    if "incorrect_answers" in row:
        incorrect = [str(a).strip() for a in row["incorrect_answers"]]
    else:
        incorrect = [str(_first(row, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
    choices, letter = shuffle_choices(correct, incorrect, seed=seed, problem_id=problem_id)
    lines = [f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices)]
    question = str(_first(row, "Question", "question")).strip()
    return Problem(problem_id, "\n".join([question, *lines]) + CHOICE_SUFFIX, letter)


def creative_problems(path: Path, seed: int) -> list[Problem]:
    """EQ-Bench Creative Writing v3's prompts file (``spectrum.eval.creative``): no gold,
    a judge scores each piece."""
    from spectrum.eval.creative import read_prompts

    return [Problem(p.id, p.prompt, "") for p in read_prompts(path)]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("synthetic", "exact", (), None, "the embedded pair's task (synthetic.py here)"),
        Benchmark(
            "aime24",
            "math",
            (("HuggingFaceH4/aime_2024", None, "train"),),
            math_problem,
            "AIME 2024",
        ),
        Benchmark(
            "aime25",
            "math",
            (
                ("opencompass/AIME2025", "AIME2025-I", "test"),
                ("opencompass/AIME2025", "AIME2025-II", "test"),
            ),
            math_problem,
            "AIME 2025 (I and II)",
        ),
        Benchmark(
            "hmmt25",
            "math",
            (("MathArena/hmmt_feb_2025", None, "train"),),
            math_problem,
            "HMMT February 2025",
        ),
        Benchmark(
            "gpqa_diamond",
            "choice",
            (("Idavidrein/gpqa", "gpqa_diamond", "train"),),
            gpqa_problem,
            "GPQA Diamond (choices shuffled with a seeded RNG)",
        ),
        Benchmark(
            "creative_writing",
            "judge",
            (),
            None,
            "EQ-Bench Creative Writing v3 layout from a local file, scored by a judge",
            read_file=creative_problems,
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _read_local(path: Path) -> list[dict]:
    import pandas as pd

    if not path.is_file():
        raise UserError(f"benchmark file not found: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl").to_dict("records")
    raise UserError(f"benchmark file {path} must be .jsonl or .parquet")


def _read_hub(bench: Benchmark) -> list[dict]:
    import datasets

    rows: list[dict] = []
    try:
        for dataset_id, config, split in bench.hub:
            rows.extend(datasets.load_dataset(dataset_id, config, split=split))
    except Exception as error:  # offline, gated, renamed: all mean "give a local file"
        ids = ", ".join(sorted({h[0] for h in bench.hub}))
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise UserError(
            f"cannot load benchmark {bench.name!r} from the hub ({ids}){offline}: "
            f"{type(error).__name__}; it needs a local JSONL/Parquet file (columns: "
            "docs/SCHEMA.md)",
            cli_hint=f"pass it with --data {bench.name}=PATH",
        ) from None
    return rows


def load_problems(
    name: str,
    *,
    path: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    levels: tuple[int, ...] | None = None,
) -> list[Problem]:
    """The benchmark's problems (first ``limit`` of them; per level for ``synthetic``)."""
    bench = get_benchmark(name)
    if bench.read_file is not None:
        if not path:
            raise UserError(
                f"benchmark {name!r} reads a local file ({bench.summary})",
                cli_hint=f"pass it with --data {name}=PATH",
            )
        if not Path(path).is_file():
            raise UserError(f"benchmark file not found: {path}")
        problems = bench.read_file(Path(path), seed)
        return problems[:limit] if limit else problems
    if bench.row_to_problem is None:
        return synthetic_problems(limit=limit, seed=seed, levels=levels)
    rows = _read_local(Path(path)) if path else _read_hub(bench)
    problems = [bench.row_to_problem(row, i, seed) for i, row in enumerate(rows)]
    return problems[:limit] if limit else problems


def synthetic_problems(
    *, limit: int | None = None, seed: int = 0, levels: tuple[int, ...] | None = None
) -> list[Problem]:
    """Held-out test problems of the embedded pair's task: ``limit`` per level."""
    from spectrum.eval.benchmarks import synthetic as task

    per_level = limit or SYNTHETIC_DEFAULT_PER_LEVEL
    return [
        Problem(p.id, p.messages[0]["content"], p.answer, p.level)
        for level in levels or task.LEVELS
        for p in task.make_problems(level, per_level, seed=seed, split="test")
    ]
