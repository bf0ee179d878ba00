"""The transformers backend: batched left-padded generation with exact token counts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.generate.batch import DecodingSettings, TransformersGenerator

CONVERSATIONS = [
    [{"role": "user", "content": "1+1"}],
    [{"role": "user", "content": "a much longer question, padded less"}],
    [{"role": "user", "content": "x"}],
    [{"role": "user", "content": "what is 12*3?"}],
]
MAX_NEW = 12


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_pair):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_pair["thinking"], dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_pair["thinking"])


def _unbatched_tokens(model, tokenizer, conversation):
    """Reference: one conversation alone, no padding at all, greedy."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=MAX_NEW,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def test_batched_greedy_matches_unbatched_counts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    eos = tokenizer.eos_token_id
    # A hook on lm_head raises EOS's logit so that some responses stop early and others
    # run into the limit: the bias is the smallest that gives both outcomes.
    bias = {"value": 0.0}

    def raise_eos(module, args, logits):
        logits = logits.clone()
        logits[..., eos] += bias["value"]
        return logits

    hook = model.lm_head.register_forward_hook(raise_eos)
    try:
        for value in [i / 100 for i in range(0, 101, 2)]:
            bias["value"] = value
            refs = [_unbatched_tokens(model, tokenizer, c) for c in CONVERSATIONS]
            if any(eos in r for r in refs) and any(eos not in r for r in refs):
                break
        else:
            pytest.fail("no EOS bias gives both finished and truncated responses")
        generator = TransformersGenerator(model, tokenizer, batch_size=3)
        settings = DecodingSettings(do_sample=False, max_new_tokens=MAX_NEW)
        gens = generator.generate(CONVERSATIONS, settings, n=2)
    finally:
        hook.remove()
    assert len(gens) == 2 * len(CONVERSATIONS)
    for i, ref in enumerate(refs):
        expected = ref.index(eos) + 1 if eos in ref else MAX_NEW
        for gen in gens[2 * i : 2 * i + 2]:
            assert gen.n_tokens == expected
            assert gen.finished == (eos in ref)
            assert gen.text == tokenizer.decode(ref[:expected], skip_special_tokens=True)
            assert gen.latency_s > 0


def test_sampling_is_seeded_and_respects_limit(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    generator = TransformersGenerator(model, tokenizer, batch_size=8)
    settings = DecodingSettings.for_lam(0.5, max_new_tokens=6)
    first = generator.generate(CONVERSATIONS[:2], settings, n=3, seed=4)
    again = generator.generate(CONVERSATIONS[:2], settings, n=3, seed=4)
    assert [g.text for g in first] == [g.text for g in again]
    assert all(1 <= g.n_tokens <= 6 for g in first)
    assert all(g.finished or g.n_tokens == 6 for g in first)


def test_per_model_defaults():
    direct = DecodingSettings.for_lam(0.0)
    merged = DecodingSettings.for_lam(0.3, max_new_tokens=64)
    assert (direct.temperature, direct.top_p, direct.top_k) == (0.7, 0.8, 20)
    assert (merged.temperature, merged.top_p, merged.top_k) == (0.6, 0.95, 20)
    assert merged.max_new_tokens == 64
    assert DecodingSettings.for_model("thinking") == DecodingSettings.for_model("merged")
