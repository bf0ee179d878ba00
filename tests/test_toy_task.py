"""The synthetic task: deterministic problems, a held-out split training never sees, grading."""

from __future__ import annotations

import json
import random

import pytest

from spectrum.cli import main
from spectrum.errors import UserError
from spectrum.eval.benchmarks import synthetic as task
from spectrum.toy.train import base_style, sample_batch, toy_tokenizer


def test_problems_are_deterministic_distinct_and_correct():
    for level in task.LEVELS:
        problems = task.make_problems(level, 50, seed=3)
        assert problems == task.make_problems(level, 50, seed=3)
        assert problems != task.make_problems(level, 50, seed=4)
        assert len({p.question for p in problems}) == 50
        for problem in problems:
            # Independent oracle: Python evaluates the question text itself.
            assert problem.answer == str(eval(problem.question))
            assert problem.level == level == problem.question.count(" ") // 2
            assert problem.id.startswith(f"L{level}-")


def test_running_values_stay_in_the_starting_ten():
    rng = random.Random(0)
    for _ in range(2000):
        problem = task.random_problem(rng.choice(task.LEVELS), rng)
        values = task.running_values(problem)
        assert {value // 10 for value in values} == {problem.start // 10}
        assert problem.start >= 10


def test_prompt_is_the_math_benchmark_prompt():
    problem = task.make_problems(2, 1, seed=0)[0]
    assert problem.messages == [
        {
            "role": "user",
            "content": f"{problem.question}\nPlease reason step by step, and put your final "
            "answer within \\boxed{}.",
        }
    ]


def test_held_out_problems_never_reach_training():
    test_questions = {
        p.question for level in task.LEVELS for p in task.make_problems(level, 200, seed=0)
    }
    level_one_test = {p.question for p in task.make_problems(1, 200, seed=0)}
    assert len(level_one_test) == 200
    rng = random.Random(0)
    seen: set[str] = set()
    for _ in range(1500):  # the very sampler the recipe trains from
        seen.update(problem.question for problem, _ in sample_batch(rng, base_style, 32))
    assert seen.isdisjoint(test_questions)
    # Not vacuous: the stream covered most of level 1's training problems.
    level_one_seen = {q for q in seen if q.count(" ") == 2}
    all_level_one = {
        f"{a} {op} {d}"
        for a in range(10, 100)
        for op in "+-"
        for d in range(1, 10)
        if (a + d if op == "+" else a - d) // 10 == a // 10
    }
    assert len(all_level_one) == 810
    level_one_train = {q for q in all_level_one if task.split_of(q) == "train"}
    assert len(level_one_seen) > 0.9 * len(level_one_train)
    assert level_one_test <= all_level_one - level_one_train


def test_trace_steps_line_up_with_question_slots():
    tokenizer = toy_tokenizer()
    problem = task.make_problems(4, 1, seed=1)[0]
    question = tokenizer(problem.question, add_special_tokens=False)["input_ids"]
    steps = tokenizer(task.worked_steps(problem), add_special_tokens=False)["input_ids"]
    assert len(question) == len(steps) == 2 + 4 * problem.level
    words = tokenizer(task.PROMPT_SUFFIX + "\\boxed{7}", add_special_tokens=False)["input_ids"]
    assert len(words) == 5  # "\n", the instruction, "\boxed{", "7", "}"


def test_responses_and_grading():
    problem = task.make_problems(3, 1, seed=0)[0]
    direct = task.direct_response(problem)
    assert direct == f"\\boxed{{{problem.answer}}}"
    concise = task.thinking_response(problem)
    verbose = task.thinking_response(problem, checks=2)
    assert concise.startswith("<think>\n") and verbose.count("Check: ") == 2
    for response in (direct, concise, verbose):
        assert task.is_correct(response, problem.answer)
    assert not task.thinks(direct) and task.thinks(concise)
    # Only the answer after </think> counts.
    assert not task.is_correct(
        f"<think>\\boxed{{{problem.answer}}}</think>\\boxed{{0}}", problem.answer
    )
    assert task.is_correct("<think>\\boxed{1}</think>\n\\boxed{2}", "2")
    assert task.extract_boxed("no answer") is None
    assert task.extract_boxed("\\boxed{ 12 } then \\boxed{13}") == "13"


def test_bad_requests_are_user_errors():
    with pytest.raises(UserError, match="unknown level 9"):
        task.make_problems(9, 1)
    with pytest.raises(UserError, match="fewer than 5000 distinct test problems"):
        task.make_problems(1, 5000)
    with pytest.raises(UserError, match="unknown split"):
        task.make_problems(1, 1, split="dev")


def test_bench_export_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "l3.jsonl"
    assert (
        main(
            [
                "bench",
                "export",
                "synthetic",
                "--level",
                "3",
                "--n",
                "7",
                "--seed",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = task.make_problems(3, 7, seed=2)
    assert [r["answer"] for r in records] == [p.answer for p in expected]
    assert [r["messages"] for r in records] == [p.messages for p in expected]
    assert main(["bench", "export", "synthetic", "--level", "3", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["bench", "export", "synthetic", "--level", "8", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l3.jsonl"]
