from transformers import AutoTokenizer

from spectrum.toy.tokenizer import build_char_tokenizer


def test_round_trip_keeps_think_tags_and_chat_template(tmp_path):
    build_char_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "<think>\n12+3=15</think>\n\\boxed{15}"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["<think>", "\n"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "<think>\nwork</think>\nA1"},
            {"role": "user", "content": "q2"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    # Earlier reasoning is dropped from the history, as Qwen3's template does.
    assert prompt == (
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
    )
