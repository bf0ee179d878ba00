"""The training recipe end to end at a tiny size: a loadable, reproducible pair."""

from __future__ import annotations

import argparse
import hashlib
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.cli import main
from spectrum.commands.toy import parse_checks
from spectrum.eval.benchmarks import synthetic as task
from spectrum.toy.train import PAIR_MODELS, encode, toy_tokenizer, verbose_style


def folder_digest(path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("toy_train")
    assert main(["toy", "train", "--tiny", "--out", str(root / "a"), "--seed", "3"]) == 0
    return root


def test_train_writes_a_loadable_pair(tiny_trained):
    pair = tiny_trained / "a"
    assert sorted(p.name for p in pair.iterdir()) == sorted(PAIR_MODELS)
    for name in PAIR_MODELS:
        model = AutoModelForCausalLM.from_pretrained(pair / name)
        tokenizer = AutoTokenizer.from_pretrained(pair / name)
        assert model.config.model_type == "qwen3"
        assert (pair / name / "model.safetensors").is_file()
        assert "spectrum toy train" in (pair / name / "README.md").read_text()
        problem = task.make_problems(2, 1, seed=0)[0]
        prompt = tokenizer.apply_chat_template(
            problem.messages, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert torch.equal(out[0, : ids.shape[1]], ids[0]) and ids.shape[1] < out.shape[1]
    # The children really are fine-tuned from the base, and thinking from thinking_concise.
    states = {n: AutoModelForCausalLM.from_pretrained(pair / n).state_dict() for n in PAIR_MODELS}
    for name in ("direct", "thinking_concise", "thinking"):
        assert not torch.equal(states[name]["lm_head.weight"], states["base"]["lm_head.weight"])


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_trained):
    assert main(["toy", "train", "--tiny", "--out", str(tiny_trained / "b"), "--seed", "3"]) == 0
    assert main(["toy", "train", "--tiny", "--out", str(tiny_trained / "c"), "--seed", "4"]) == 0
    a, b, c = (folder_digest(tiny_trained / x) for x in "abc")
    assert a == b != c


def test_existing_output_is_refused_and_left_alone(tiny_trained, capsys):
    before = folder_digest(tiny_trained / "a")
    assert main(["toy", "train", "--tiny", "--out", str(tiny_trained / "a")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert folder_digest(tiny_trained / "a") == before
    missing = tiny_trained / "no" / "such" / "pair"
    assert main(["toy", "train", "--tiny", "--out", str(missing)]) == 2
    assert not (tiny_trained / "no").exists()
    a_file = tiny_trained / "file"
    a_file.write_text("x")
    assert main(["toy", "train", "--tiny", "--out", str(a_file), "--force"]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "x"


def test_loss_covers_the_assistant_turn_only():
    tokenizer = toy_tokenizer()
    problem = task.make_problems(2, 1, seed=0, split="train")[0]
    response = task.thinking_response(problem, checks=1)
    ids, labels = encode(tokenizer, (problem, response))
    text = tokenizer.apply_chat_template(
        problem.messages, add_generation_prompt=True, tokenize=False
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :]
    assert tokenizer.decode(ids[len(prompt) :]) == response + "<|im_end|>"


def test_thinking_stage_draws_its_re_checks_from_the_range():
    problem = task.make_problems(2, 1, seed=0, split="train")[0]
    rng = random.Random(0)
    counts = {verbose_style(rng, (0, 3))(problem).count("Check: ") for _ in range(200)}
    assert counts == {0, 1, 2, 3}
    # A fixed count draws nothing, so the fixed-count recipe keeps its random stream.
    rng, fresh = random.Random(1), random.Random(1)
    assert verbose_style(rng, (2, 2))(problem).count("Check: ") == 2
    assert rng.random() == fresh.random()


@pytest.mark.parametrize(("text", "checks"), [("2", (2, 2)), ("0-3", (0, 3))])
def test_thinking_checks_flag(text, checks):
    assert parse_checks(text) == checks


@pytest.mark.parametrize("text", ["3-1", "5", "a-b", "-1"])
def test_thinking_checks_flag_refuses_bad_ranges(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_checks(text)
