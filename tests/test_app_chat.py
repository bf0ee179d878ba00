"""spectrum.generate.chat: streaming one reply, and several side by side, on real tiny models."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.generate.batch import DecodingSettings
from spectrum.generate.chat import (
    math_markdown,
    split_reasoning,
    stream_columns,
    stream_reply,
)

GREEDY = DecodingSettings(max_new_tokens=24, do_sample=False)
CONVERSATION = [{"role": "user", "content": "What is 12 + 7?"}]
GREEDY_LONG = DecodingSettings(max_new_tokens=160, do_sample=False)
THINKING = Path(__file__).resolve().parents[1] / "assets" / "pair" / "thinking"


@pytest.fixture(scope="module")
def direct(tiny_pair):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_pair["direct"], dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_pair["direct"])


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stream_reply"]


def test_stream_reply_matches_plain_greedy_generate(direct):
    model, tokenizer = direct
    updates = list(stream_reply(model, tokenizer, CONVERSATION, GREEDY))
    prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    reference = model.generate(**encoded, max_new_tokens=24, do_sample=False)
    new_ids = reference[0, encoded["input_ids"].shape[1] :].tolist()
    assert tokenizer.eos_token_id not in new_ids  # a random model: runs to the limit
    final = updates[-1]
    assert final.finished and final.truncated
    assert final.text == tokenizer.decode(new_ids, skip_special_tokens=True)
    assert final.n_tokens == len(new_ids) == 24
    assert final.tokens_per_s > 0
    assert all(not u.finished for u in updates[:-1])
    # Text only grows.
    assert all(b.text.startswith(a.text) for a, b in zip(updates, updates[1:], strict=False))
    assert not stream_threads()


def test_closing_the_stream_stops_generation_and_joins_the_worker(direct):
    model, tokenizer = direct
    settings = DecodingSettings(max_new_tokens=400, do_sample=False)
    stream = stream_reply(model, tokenizer, CONVERSATION, settings)
    first = next(stream)
    assert first.n_tokens < 400
    stream.close()
    assert not stream_threads()


def test_stop_event_ends_the_reply_early_with_a_final_update(direct):
    model, tokenizer = direct
    stop = threading.Event()
    settings = DecodingSettings(max_new_tokens=400, do_sample=False)
    updates = []
    for update in stream_reply(model, tokenizer, CONVERSATION, settings, stop=stop):
        updates.append(update)
        stop.set()
    assert updates[-1].finished
    assert not updates[-1].truncated
    assert updates[-1].n_tokens < 400


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("<think>\n12 +7=19\n</think>\n\\boxed{19}", "12 +7=19", "\\boxed{19}"),
        ("12 +7=19\n</think>\n\\boxed{19}", "12 +7=19", "\\boxed{19}"),  # no opening tag
        ("<think>\n12 +7", "12 +7", ""),  # still thinking
        ("\\boxed{19}", "", "\\boxed{19}"),
    ],
)
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def test_the_reasoning_block_counts_its_own_tokens(direct):
    """On the embedded thinking parent: tokens up to </think>, found by a plain scan here."""
    model = AutoModelForCausalLM.from_pretrained(THINKING, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(THINKING)
    conversation = [{"role": "user", "content": "52 + 5 - 5 + 7 - 9 + 2"}]
    final = list(stream_reply(model, tokenizer, conversation, GREEDY_LONG))[-1]
    assert final.thinks and final.finished
    ids = tokenizer(final.text, add_special_tokens=False)["input_ids"]
    first = next(k for k in range(1, len(ids) + 1) if "</think>" in tokenizer.decode(ids[:k]))
    assert final.reasoning_tokens == first < final.n_tokens
    assert 0 < final.reasoning_s <= final.n_tokens / final.tokens_per_s
    direct_model, direct_tokenizer = direct
    plain = list(stream_reply(direct_model, direct_tokenizer, CONVERSATION, GREEDY))[-1]
    assert (plain.reasoning_tokens, plain.reasoning_s) == (0, 0.0)  # no reasoning at all


def slow_counter(n: int, delay: float):
    def factory(stop: threading.Event):
        for i in range(n):
            if stop.is_set():
                return
            time.sleep(delay)
            yield i

    return factory


def test_stream_columns_runs_side_by_side_and_ends_with_every_final_value():
    started = time.perf_counter()
    snapshots = list(stream_columns({"a": slow_counter(5, 0.05), "b": slow_counter(5, 0.05)}))
    elapsed = time.perf_counter() - started
    assert snapshots[-1] == {"a": 4, "b": 4}
    assert elapsed < 0.45  # concurrent: well under the 0.5 s the two would take in a row
    assert any(s["a"] is not None and s["a"] < 4 for s in snapshots)  # partial snapshots


def test_stream_columns_reraises_a_column_error_and_stops_the_others():
    def failing(stop: threading.Event):
        yield 0
        raise ValueError("column broke")

    long_column = slow_counter(1000, 0.01)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="column broke"):
        list(stream_columns({"ok": long_column, "bad": failing}))
    assert time.perf_counter() - started < 5  # the 10 s column was stopped


def test_a_callers_stop_event_ends_every_column_at_once():
    stop = threading.Event()
    columns = {name: slow_counter(1000, 0.01) for name in ("a", "b", "c")}
    started = time.perf_counter()
    snapshots = []
    for snapshot in stream_columns(columns, stop=stop):
        snapshots.append(snapshot)
        if all(value is not None for value in snapshot.values()):
            stop.set()  # the Stop button, once every column has begun
    assert time.perf_counter() - started < 5  # not the 10 s each column would take
    assert all(value < 999 for value in snapshots[-1].values())


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (r"so \boxed{95}.", r"so $\boxed{95}$."),
        (r"\boxed{\frac{1}{2}} and \boxed{3", r"$\boxed{\frac{1}{2}}$ and \boxed{3"),  # streaming
        (
            r"$\boxed{4}$, \(\boxed{5}\), $$\boxed{6}$$",
            r"$\boxed{4}$, \(\boxed{5}\), $$\boxed{6}$$",
        ),
        ("no math", "no math"),
    ],
)
def test_boxed_answers_become_math_the_page_renders(text, shown):
    assert math_markdown(text) == shown


def test_stream_columns_with_real_models(direct):
    model, tokenizer = direct
    columns = {
        name: (lambda stop: stream_reply(model, tokenizer, CONVERSATION, GREEDY, stop=stop))
        for name in ("left", "right")
    }
    final = list(stream_columns(columns))[-1]
    assert final["left"].text == final["right"].text
    assert final["left"].finished and final["right"].finished


def test_reply_ends_at_the_end_of_turn_token(direct, tiny_pair):
    model, tokenizer = direct
    plain = list(stream_reply(model, tokenizer, CONVERSATION, GREEDY))[-1]
    # Make the 6th generated character the end-of-turn token: generation must stop there.
    ids = tokenizer(plain.text, add_special_tokens=False)["input_ids"]
    position = next(i for i in range(5, len(ids)) if ids[i] not in ids[:i])
    stopper = AutoTokenizer.from_pretrained(tiny_pair["direct"])
    stopper.eos_token = tokenizer.convert_ids_to_tokens(ids[position])
    final = list(stream_reply(model, stopper, CONVERSATION, GREEDY))[-1]
    assert final.finished and not final.truncated
    assert final.n_tokens == position
    assert final.text == tokenizer.decode(ids[:position])


def test_a_blind_turn_whose_shuffle_is_the_plain_order_stays_blind():
    """One blind turn in six draws the plain order: its columns must still be A / B / C."""
    from spectrum.dashboard import COLUMNS, Turn
    from ui.chat_tab import title

    blind = Turn("12 + 7", {}, COLUMNS, revealed=False)
    assert [title(blind, i) for i in range(3)] == ["Model A", "Model B", "Model C"]
    seen = Turn("12 + 7", {}, COLUMNS, revealed=True)
    assert [title(seen, i) for i in range(3)] == ["Direct (λ = 0)", "Merged", "Thinking (λ = 1)"]
