"""Streaming chat overhead: ``stream_reply`` vs a plain ``model.generate``, and three columns
side by side (``stream_columns``) vs the same three replies one after another.

Ratios against baselines measured in the same run, on a tiny random Qwen3 (or the pair
given with --direct). Greedy decoding with EOS disabled, so every run makes exactly
--tokens tokens.

    python bench/chat_stream.py [--direct PATH] [--tokens 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.generate.batch import DecodingSettings
from spectrum.generate.chat import prompt_ids, stream_columns, stream_reply
from spectrum.toy.tiny import save_tiny_pair

CONVERSATION = [{"role": "user", "content": "37 + 5 - 8 + 2"}]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direct", help="model folder (default: a tiny random Qwen3)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.direct or save_tiny_pair(tempfile.mkdtemp(), seed=0)["direct"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # No EOS: every run generates exactly --tokens tokens.
    tokenizer.eos_token_id = None
    model.generation_config.eos_token_id = None
    settings = replace(DecodingSettings(do_sample=False), max_new_tokens=args.tokens)
    ids = prompt_ids(tokenizer, CONVERSATION, model.device)

    def plain() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=False,
            )

    def streamed() -> None:
        final = list(stream_reply(model, tokenizer, CONVERSATION, settings))[-1]
        assert final.n_tokens == args.tokens, final.n_tokens

    def three_in_a_row() -> None:
        for _ in range(3):
            streamed()

    def three_side_by_side() -> None:
        def column(stop):
            return stream_reply(model, tokenizer, CONVERSATION, settings, stop=stop)

        list(stream_columns({"direct": column, "merged": column, "thinking": column}))

    plain_s = best_of(args.repeats, plain)
    streamed_s = best_of(args.repeats, streamed)
    row_s = best_of(args.repeats, three_in_a_row)
    side_s = best_of(args.repeats, three_side_by_side)
    print(f"model: {path}, {args.tokens} tokens, torch threads {args.threads}")
    print(f"plain generate      {plain_s:7.3f} s  ({args.tokens / plain_s:7.1f} tok/s)")
    print(f"stream_reply        {streamed_s:7.3f} s  ratio to plain {streamed_s / plain_s:5.2f}")
    print(f"3 columns in a row  {row_s:7.3f} s")
    print(f"3 columns at once   {side_s:7.3f} s  ratio to in a row {side_s / row_s:5.2f}")


if __name__ == "__main__":
    main()
