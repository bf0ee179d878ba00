"""Each real benchmark loads from a local file in its hub schema; no hub and no file fails fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from spectrum.errors import UserError
from spectrum.eval.benchmarks import MATH_SUFFIX, load_problems

ROWS = {
    "aime24": [
        {
            "id": 60,
            "problem": "Find x.",
            "solution": "...",
            "answer": "204",
            "url": "u",
            "year": 2024,
        },
        {
            "id": 61,
            "problem": "Find y.",
            "solution": "...",
            "answer": "25",
            "url": "u",
            "year": 2024,
        },
    ],
    "aime25": [
        {"question": "Compute z.", "answer": "70"},
        {"question": "Compute w.", "answer": "588"},
    ],
    "hmmt25": [{"problem_idx": 1, "problem": "Evaluate s.", "answer": "\\frac{9}{2}"}],
    "gpqa_diamond": [
        {
            "Record ID": "recA",
            "Question": "Q?",
            "Correct Answer": "yes",
            "Incorrect Answer 1": "no",
            "Incorrect Answer 2": "maybe",
            "Incorrect Answer 3": "never",
        }
    ],
}


def _write(path, rows):
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("name", list(ROWS))
def test_local_file_in_hub_schema(tmp_path, name, suffix):
    path = tmp_path / f"{name}{suffix}"
    _write(path, ROWS[name])
    problems = load_problems(name, path=path, seed=5)
    assert len(problems) == len(ROWS[name])
    if name == "gpqa_diamond":
        assert problems[0].id == "recA"
        assert f"({problems[0].gold}) yes" in problems[0].prompt
    else:
        question = ROWS[name][0].get("problem") or ROWS[name][0]["question"]
        assert problems[0].prompt == question + MATH_SUFFIX
        assert problems[0].gold == ROWS[name][0]["answer"]
    assert load_problems(name, path=path, limit=1)[0].id == problems[0].id


def test_missing_file_and_unknown_benchmark(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_problems("aime24", path=tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="unknown benchmark"):
        load_problems("aime26")


def test_offline_without_local_file_is_one_clear_error():
    # The flag is the CLI's hint (UserError.for_cli); the dashboard shows the message alone.
    code = (
        "from spectrum.errors import UserError\n"
        "from spectrum.eval.benchmarks import load_problems\n"
        "try:\n    load_problems('aime24')\n"
        "except UserError as error:\n    print(error.for_cli())\n    raise"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "UserError: cannot load benchmark 'aime24' from the hub" in done.stderr
    assert "HuggingFaceH4/aime_2024" in done.stderr and "--data" in done.stdout


def test_synthetic_wraps_the_toy_task():
    from spectrum.eval.benchmarks import synthetic as task

    problems = load_problems("synthetic", limit=3, levels=(1, 4), seed=2)
    expected = [p for level in (1, 4) for p in task.make_problems(level, 3, seed=2)]
    assert [p.id for p in problems] == [p.id for p in expected]
    assert [p.level for p in problems] == [1, 1, 1, 4, 4, 4]
    assert problems[0].conversation() == expected[0].messages
    assert [p.gold for p in problems] == [p.answer for p in expected]
    assert len(load_problems("synthetic", limit=2)) == 2 * len(task.LEVELS)
