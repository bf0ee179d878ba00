"""The shipped embedded pair: it loads everywhere and shows the two ends of the spectrum."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.eval.benchmarks import synthetic as task
from spectrum.toy import measure
from spectrum.toy.train import PAIR_MODELS
from spectrum.weights.checkpoint import open_checkpoint

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"


@pytest.mark.parametrize("name", PAIR_MODELS)
def test_shipped_model_loads_through_transformers_and_checkpoint_code(name):
    model = AutoModelForCausalLM.from_pretrained(PAIR / name)
    tokenizer = AutoTokenizer.from_pretrained(PAIR / name)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert tokenizer.eos_token == "<|im_end|>" and "</think>" in tokenizer.get_vocab()
    checkpoint = open_checkpoint(PAIR / name)
    state = model.state_dict()
    assert sorted(checkpoint.names()) == sorted(state)
    for tensor_name in checkpoint.names():
        assert torch.equal(checkpoint.get(tensor_name), state[tensor_name])
    assert "spectrum toy train" in (PAIR / name / "README.md").read_text()


def test_shipped_pair_is_small():
    total = sum(f.stat().st_size for f in PAIR.rglob("*") if f.is_file())
    assert total < 20 * 2**20


def test_direct_never_thinks_thinking_always_thinks_and_wins_on_the_hardest_level():
    torch.set_num_threads(1)
    hardest = max(task.LEVELS)
    rows = measure.sweep(
        PAIR / "direct",
        PAIR / "thinking",
        [0.0, 1.0],
        n=30,
        levels=(min(task.LEVELS), hardest),
        progress=False,
    )
    by_key = {(row.lam, row.level): row for row in rows}
    for level in (min(task.LEVELS), hardest):
        assert by_key[(0.0, level)].think_rate == 0.0
        assert by_key[(1.0, level)].think_rate == 1.0
        assert by_key[(1.0, level)].tokens > 3 * by_key[(0.0, level)].tokens
    assert by_key[(0.0, min(task.LEVELS))].accuracy >= 0.9
    assert by_key[(1.0, hardest)].accuracy >= by_key[(0.0, hardest)].accuracy + 0.3
