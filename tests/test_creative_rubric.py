"""creative_writing without a model: the v3-layout prompts file, the rubric prompt, and the
judge-reply parser on fixed judge texts (clean, decorated, partial, out of range, junk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectrum.errors import UserError
from spectrum.eval.benchmarks import load_problems
from spectrum.eval.creative import (
    CRITERIA,
    ITERATIONS,
    NEGATIVE,
    Judge,
    judge_reply,
    parse_scores,
    read_prompts,
    rubric_prompt,
)

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "creative_writing" / "prompts_sample.json"


def _expected_score(scores: dict[str, float]) -> float:
    """The piece score written out independently: positives as given, negatives 20 − s."""
    total = 0.0
    for name, value in scores.items():
        total += (20 - value) if name in NEGATIVE else value
    return total / len(scores)


def test_sample_file_gives_each_prompt_three_times_with_its_modifiers():
    entries = json.loads(SAMPLE.read_text())
    problems = load_problems("creative_writing", path=SAMPLE)
    assert len(problems) == len(entries) * ITERATIONS
    for key, entry in entries.items():
        for i in range(ITERATIONS):
            problem = next(p for p in problems if p.id == f"{key}#{i + 1}")
            modifier = entry["seed_modifiers"][i % len(entry["seed_modifiers"])]
            assert problem.prompt == entry["writing_prompt"].replace("<SEED>", modifier)
            assert "<SEED>" not in problem.prompt and problem.gold == ""
    assert [p.id for p in load_problems("creative_writing", path=SAMPLE, limit=4)] == [
        "1#1", "1#2", "1#3", "2#1",
    ]  # fmt: skip


def test_modifiers_cycle_when_fewer_than_iterations(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"a": {"writing_prompt": "Write <SEED>.", "seed_modifiers": ["x"]}}))
    assert [p.prompt for p in read_prompts(path)] == ["Write x."] * ITERATIONS


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[1, 2]", "JSON object of prompts"),
        ("{}", "JSON object of prompts"),
        ("{not json", "cannot read"),
        ('{"a": 3}', "is not an object"),
        ('{"a": {"seed_modifiers": ["x"]}}', "no writing_prompt"),
        ('{"a": {"writing_prompt": "no mark", "seed_modifiers": ["x"]}}', "<SEED>"),
        ('{"a": {"writing_prompt": "w <SEED>", "seed_modifiers": []}}', "no seed_modifiers"),
        ('{"a": {"writing_prompt": "w <SEED>", "seed_modifiers": [1]}}', "must be a string"),
    ],
)
def test_bad_prompts_files_are_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError) as error:
        load_problems("creative_writing", path=path)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_creative_writing_needs_a_local_file(tmp_path):
    with pytest.raises(UserError, match="reads a local file"):
        load_problems("creative_writing")
    with pytest.raises(UserError, match="not found"):
        load_problems("creative_writing", path=tmp_path / "missing.json")


def test_rubric_prompt_names_every_criterion_and_the_inverted_ones():
    text = rubric_prompt("Write about a ferry.", "The ferry left.")
    assert all(f"- {name}" in text for name in CRITERIA)
    negative_line = next(line for line in text.splitlines() if "lower score is better" in line)
    assert {name for name in CRITERIA if name in negative_line} >= NEGATIVE
    assert "Write about a ferry." in text and "The ferry left." in text
    assert len(CRITERIA) == 22 and len(NEGATIVE) == 9 and NEGATIVE <= set(CRITERIA)


def test_a_clean_reply_with_every_criterion():
    given = {name: float((3 * i) % 21) for i, name in enumerate(CRITERIA)}
    reply = "[Analysis]\nSolid piece.\n\n[Scores]\n" + "\n".join(
        f"{name}: {value:g}" for name, value in given.items()
    )
    found = parse_scores(reply)
    assert found.scores == given and found.missing == () and found.rejected == {}
    judged = judge_reply(reply)
    assert judged.error is None and judged.score == pytest.approx(_expected_score(given))


def test_decorated_lines_analysis_numbers_and_unknown_names():
    reply = (
        "[Analysis]\nCoherent: 2 is what a weaker piece would get.\n"
        "[Scores]\n"
        "**Coherent**: 15\n"
        "- Meandering: [4]\n"
        "Elegant Prose: 12/20\n"
        "  tell-don't-show : 6.5\n"  # case and spacing differ; still the criterion
        "Plot Twists: 19\n"  # not a criterion: ignored
        "Overall Impression - Score 11\n"
        "Thanks for reading!\n"
    )
    found = parse_scores(reply)
    assert found.scores == {
        "Coherent": 15.0, "Meandering": 4.0, "Elegant Prose": 12.0,
        "Tell-Don't-Show": 6.5, "Overall Impression": 11.0,
    }  # fmt: skip
    assert len(found.missing) == len(CRITERIA) - 5
    assert judge_reply(reply).score == pytest.approx(_expected_score(found.scores))


def test_out_of_range_scores_are_rejected_not_used():
    reply = "[Scores]\nCoherent: 25\nAmateurish: -3\nElegant Prose: 14\nCoherent: 30\n"
    found = parse_scores(reply)
    assert found.scores == {"Elegant Prose": 14.0}
    assert found.rejected == {"Coherent": "30", "Amateurish": "-3"}
    only_bad = judge_reply("[Scores]\nCoherent: 25\n")
    assert only_bad.score is None and "out of 0–20 (Coherent)" in only_bad.error


def test_a_later_line_for_the_same_criterion_wins():
    assert parse_scores("Coherent: 3\nCoherent: 17\n").scores == {"Coherent": 17.0}


@pytest.mark.parametrize(
    "reply",
    ["", "   ", "lorem ipsum dolor", "[Scores]\nscore: 12\nGood: yes\n", "<think>x</think>"],
)
def test_junk_is_a_recorded_parse_failure(reply):
    judged = judge_reply(reply)
    assert judged.score is None and judged.scores == {}
    assert judged.error and "\n" not in judged.error
    assert judged.text == reply


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("http://127.0.0.1:8000,judge", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://h:1/v1,m", "http://h:1/v1/chat/completions"),
        ("https://h/x/v1/chat/completions/,m", "https://h/x/v1/chat/completions"),
        ("http://h:1,Qwen/Qwen3-4B", "http://h:1/v1/chat/completions"),
    ],
)
def test_judge_flag(text, url):
    judge = Judge.parse(text)
    assert judge.url == url and judge.model == text.rpartition(",")[2]


@pytest.mark.parametrize("text", ["http://h:1", ",m", "http://h:1,", "ftp://h,m", "h:1,m"])
def test_bad_judge_flag_is_one_line(text):
    with pytest.raises(UserError) as error:
        Judge.parse(text)
    assert "--judge" in str(error.value) and "\n" not in str(error.value)
