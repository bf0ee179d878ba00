"""The measurement of the spectrum: linear merge, batched greedy decoding, the table."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from spectrum.eval.benchmarks import synthetic as task
from spectrum.toy import cards, measure
from spectrum.toy.measure import Row


def test_linear_merge_is_the_weighted_average(tiny_pair):
    direct = measure.load_model(tiny_pair["direct"]).state_dict()
    thinking = measure.load_model(tiny_pair["thinking"]).state_dict()
    merged = measure.linear_merge(direct, thinking, 0.3)
    assert merged.keys() == direct.keys()
    for name, tensor in merged.items():
        expected = 0.7 * direct[name] + 0.3 * thinking[name]
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-6)


def test_left_padded_batches_decode_like_single_prompts(tiny_pair):
    torch.set_num_threads(1)
    model = measure.load_model(tiny_pair["thinking"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair["thinking"])
    # Levels 1 and 4 give prompts of different lengths, so the batch is padded.
    conversations = [p.messages for level in (1, 4) for p in task.make_problems(level, 2)]
    batched = measure.generate_greedy(model, tokenizer, conversations, max_new_tokens=8)
    single = [
        measure.generate_greedy(model, tokenizer, [c], max_new_tokens=8)[0] for c in conversations
    ]
    assert batched == single
    assert all(1 <= n_tokens <= 8 for _, n_tokens in batched)


def test_score_table_and_summary():
    problems = task.make_problems(2, 2)
    answers = [p.answer for p in problems]
    responses = [
        (f"<think>\nx</think>\n\\boxed{{{answers[0]}}}", 6),
        ("\\boxed{0}", 3),
    ]
    row = measure.score(problems, responses, 0.5)
    assert (row.accuracy, row.tokens, row.think_rate, row.n) == (0.5, 4.5, 0.5, 2)
    rows = [
        Row(0.0, 1, 0.9, 4.0, 0.0, 10),
        Row(0.0, 5, 0.1, 5.0, 0.0, 10),
        Row(0.6, 1, 1.0, 20.0, 0.95, 10),
        Row(0.6, 5, 0.9, 30.0, 1.0, 10),
        Row(1.0, 1, 1.0, 40.0, 1.0, 10),
        Row(1.0, 5, 0.9, 60.0, 1.0, 10),
    ]
    table = cards.markdown_table(rows)
    assert "| 0.6 | 1.00 · 20.0 · 0.95 | 0.90 · 30.0 · 1.00 |" in table
    text = cards.summary(rows)
    assert "Think#R goes from < 10 % (λ=0) to > 90 % (λ=0.6)" in text
    assert (
        "Level 5: accuracy 0.10 at λ=0, 0.90 at λ=1; half-way (0.50) first reached at λ=0.6; "
        "Think#R ≥ 0.5 from λ=0.6" in text
    )
    assert "Pareto improvement: λ=0.6 has mean accuracy 0.950 with 25.0 tokens" in text
