"""A character-level Hugging Face tokenizer with Qwen3's chat and thinking tokens.

The embedded pair and the tiny test models use it, so they load with
``AutoTokenizer.from_pretrained`` and go through exactly the code path real Qwen3
pairs do (chat template, ``<think>``/``</think>``, ``<|im_end|>`` as EOS).
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")
DEFAULT_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"

# Qwen3-style: past assistant turns lose their reasoning; the model writes <think> itself.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_char_tokenizer(
    alphabet: str = DEFAULT_ALPHABET, words: tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet``, plus whole-word tokens and Qwen3 specials."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *THINK_TOKENS, *dict.fromkeys(alphabet), *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
    )
    # <think> tags stay visible in decoded text (skip_special_tokens must not drop them).
    tokenizer.add_tokens(list(THINK_TOKENS) + list(words))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
