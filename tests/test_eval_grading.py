"""Grading: math-verify off the main thread, GPQA shuffles, thinking stripped."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from spectrum.eval.benchmarks import gpqa_problem
from spectrum.eval.grading import (
    LETTERS,
    extract_letter,
    grade_choice,
    grade_exact,
    grade_math,
    shuffle_choices,
    strip_thinking,
)


def test_strip_thinking_removes_up_to_last_think_end():
    assert strip_thinking("<think>a</think>b</think> final") == " final"
    assert strip_thinking("no reasoning") == "no reasoning"


def test_math_verify_works_in_worker_thread():
    cases = [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", True),
        ("<think>maybe \\boxed{0.5}</think> The answer is \\boxed{3}.", "0.5", False),
        ("<think>maybe \\boxed{7}</think> Final: \\boxed{204}", "204", True),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        grades = list(pool.map(lambda c: grade_math(c[0], c[1]), cases))
    assert [g.correct for g in grades] == [c[2] for c in cases]
    assert grades[2].extracted == "204"


def test_exact_grading_uses_last_box_after_thinking():
    assert grade_exact("<think>\\boxed{12}</think>\\boxed{ 13 }", "13").correct
    assert not grade_exact("<think>\\boxed{13}</think>none", "13").correct
    assert grade_exact("\\boxed{a{b}c}", "a{b}c").extracted == "a{b}c"


def test_gpqa_shuffle_is_seeded_and_letter_points_to_correct_answer():
    incorrect = ["wrong 1", "wrong 2", "wrong 3"]
    first = shuffle_choices("right", incorrect, seed=3, problem_id="q1")
    assert first == shuffle_choices("right", incorrect, seed=3, problem_id="q1")
    orders = {
        tuple(shuffle_choices("right", incorrect, seed=s, problem_id="q1")[0]) for s in range(20)
    }
    assert len(orders) > 1
    for seed in range(20):
        choices, letter = shuffle_choices("right", incorrect, seed=seed, problem_id="q1")
        assert sorted(choices) == sorted(["right", *incorrect])
        assert choices[LETTERS.index(letter)] == "right"


def test_gpqa_problem_prompt_and_grading():
    row = {
        "Record ID": "rec7",
        "Question": "Which gas?",
        "Correct Answer": "Argon",
        "Incorrect Answer 1": "Neon",
        "Incorrect Answer 2": "Xenon",
        "Incorrect Answer 3": "Radon",
    }
    problem = gpqa_problem(row, 0, seed=11)
    assert f"({problem.gold}) Argon" in problem.prompt
    wrong = next(x for x in "ABCD" if x != problem.gold)
    assert grade_choice(f"<think>({wrong})</think> \\boxed{{{problem.gold}}}", problem.gold).correct
    assert not grade_choice(f"The answer is {wrong}.", problem.gold).correct
    assert extract_letter("Answer: (c)") == "C"
