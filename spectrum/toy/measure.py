"""Measure the thinking spectrum of the embedded pair: linear merges swept over λ.

Merged weights are built in memory with the registered ``linear`` method (prepare then
apply on each tensor), loaded into one Qwen3ForCausalLM, and the held-out problems of
every level are decoded greedily in left-padded batches. Per λ and level the table has
accuracy, Token#N (mean generated tokens, EOS included) and Think#R (share of responses
containing ``</think>``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from spectrum.eval.benchmarks import synthetic as task
from spectrum.methods import Parents, get_method

MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class Row:
    lam: float
    level: int
    accuracy: float
    tokens: float  # Token#N
    think_rate: float  # Think#R
    n: int


def load_model(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def linear_merge(
    direct: dict[str, torch.Tensor], thinking: dict[str, torch.Tensor], lam: float
) -> dict[str, torch.Tensor]:
    method = get_method("linear")
    merged = {}
    for name, tensor in direct.items():
        parents = Parents(name, tensor.float(), thinking[name].float())
        merged[name] = method.apply(method.prepare(parents, {}, 0), lam, {}, None).to(tensor.dtype)
    return merged


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    *,
    batch_size: int = 256,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[tuple[str, int]]:
    """(text, generated token count incl. EOS) per conversation, greedy, left-padded."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(conversations), batch_size):
        prompts = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations[start : start + batch_size]
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(device)
        output = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            n_tokens = (
                row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            )
            text = tokenizer.decode(row[:n_tokens], skip_special_tokens=True)
            results.append((text, n_tokens))
    return results


def score(problems: list[task.Problem], responses: list[tuple[str, int]], lam: float) -> Row:
    n = len(problems)
    correct = sum(
        task.is_correct(text, p.answer) for p, (text, _) in zip(problems, responses, strict=True)
    )
    return Row(
        lam=lam,
        level=problems[0].level,
        accuracy=correct / n,
        tokens=sum(count for _, count in responses) / n,
        think_rate=sum(task.thinks(text) for text, _ in responses) / n,
        n=n,
    )


def sweep(
    direct: str | Path,
    thinking: str | Path,
    lams: Iterable[float],
    *,
    n: int = 200,
    seed: int = 0,
    levels: Iterable[int] = task.LEVELS,
    device: str = "cpu",
    progress: bool = True,
) -> list[Row]:
    tokenizer = AutoTokenizer.from_pretrained(thinking)
    model = load_model(direct, device)
    direct_state = {k: v.clone() for k, v in model.state_dict().items()}
    thinking_state = load_model(thinking, device).state_dict()
    problem_sets = [task.make_problems(level, n, seed) for level in levels]
    rows = []
    for lam in tqdm(list(lams), desc="λ sweep", disable=not progress):
        model.load_state_dict(linear_merge(direct_state, thinking_state, lam))
        for problems in problem_sets:
            responses = generate_greedy(model, tokenizer, [p.messages for p in problems])
            rows.append(score(problems, responses, lam))
    return rows
