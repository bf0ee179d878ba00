"""The training recipe of the embedded pair: a base model and two children from it.

* base: pretrained from scratch on chat-formatted task text (loss on the assistant
  turn only), a mix of direct answers and worked traces with 0-2 re-checks, so both
  children start from a model that already knows both formats;
* direct: the base fine-tuned on direct answers (``\\boxed{…}`` at once);
* thinking: the base fine-tuned first on concise traces (kept as ``thinking_concise``,
  the "earlier checkpoint" of the stretch experiment), then further on over-verbose
  traces that redo the whole computation a random 0-3 times after it is done. The count
  is drawn per batch, so the model learns a distribution over how long to keep checking
  and samples it, as real thinking models do; with a fixed count (the recipe before issue
  #16) every merge that thinks copied the whole fixed-length trace and no λ < 1 saved tokens.

Seeded and reproducible: the same seed and sizes give the same bytes on the CPU.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.eval.benchmarks import synthetic as task
from spectrum.toy import cards
from spectrum.toy.tokenizer import build_char_tokenizer

Example = tuple[task.Problem, str]  # a problem and the assistant response to learn
PAIR_MODELS = ("base", "direct", "thinking_concise", "thinking")


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2  # two layers learned faster than four in the probe
    num_attention_heads: int = 4


@dataclass(frozen=True)
class Recipe:
    """Steps per stage and optimiser settings; ``Recipe.tiny()`` is the CI size."""

    base_steps: int = 1500
    direct_steps: int = 800
    concise_steps: int = 400
    verbose_steps: int = 300
    # Re-checks the base sees (0-2); 0 keeps re-checking out of the base entirely, so only
    # the last thinking stage teaches it (the stretch experiment's variant).
    base_max_checks: int = 2
    # Re-checks in the thinking stage's traces, drawn per batch from min..max inclusive.
    # (2, 2) is the fixed-length over-thinker; a range makes the count a choice the model
    # samples, as real thinking models decide how long to keep verifying.
    verbose_checks: tuple[int, int] = (0, 3)
    batch_size: int = 32
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    size: ModelSize = field(default_factory=ModelSize)

    @classmethod
    def tiny(cls) -> Recipe:
        return cls(
            base_steps=3,
            direct_steps=2,
            concise_steps=2,
            verbose_steps=2,
            batch_size=4,
            size=ModelSize(hidden_size=32, intermediate_size=64, num_attention_heads=2),
        )


def toy_tokenizer() -> PreTrainedTokenizerFast:
    # Chat roles as words keep the prompt short: compute goes to the answer, not "assistant".
    return build_char_tokenizer(words=(*task.TASK_WORDS, "user", "assistant"))


def toy_config(tokenizer: PreTrainedTokenizerFast, size: ModelSize) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        head_dim=size.hidden_size // size.num_attention_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode(tokenizer: PreTrainedTokenizerFast, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response + EOS, and labels that score the response only."""
    problem, response = example
    prompt = tokenizer.apply_chat_template(
        problem.messages, add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids.append(tokenizer.eos_token_id)
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    input_ids, labels, mask = [], [], []
    for ids, lab in encoded:
        pad = width - len(ids)
        input_ids.append(ids + [pad_id] * pad)
        labels.append(lab + [-100] * pad)
        mask.append([1] * len(ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


# A batch is one level and one response style, so its rows have one length (no padding).
BatchStyle = Callable[[random.Random], Callable[[task.Problem], str]]


def base_style(rng: random.Random, max_checks: int = 2) -> Callable[[task.Problem], str]:
    # -1: a direct answer; 0..max_checks: a trace with that many re-checks.
    checks = rng.randrange(-1, max_checks + 1)
    if checks < 0:
        return task.direct_response
    return lambda problem: task.thinking_response(problem, checks=checks)


def direct_style(rng: random.Random) -> Callable[[task.Problem], str]:
    return task.direct_response


def concise_style(rng: random.Random) -> Callable[[task.Problem], str]:
    return lambda problem: task.thinking_response(problem, checks=0)


def verbose_style(
    rng: random.Random, checks: tuple[int, int] = (2, 2)
) -> Callable[[task.Problem], str]:
    low, high = checks
    # No draw for a fixed count, so the fixed-count recipe keeps its old random stream.
    count = low if low == high else rng.randint(low, high)
    return lambda problem: task.thinking_response(problem, checks=count)


def sample_batch(rng: random.Random, style: BatchStyle, batch_size: int) -> list[Example]:
    level, respond = rng.choice(task.LEVELS), style(rng)
    problems = [task.training_problem(rng, levels=(level,)) for _ in range(batch_size)]
    return [(problem, respond(problem)) for problem in problems]


def train_stage(
    model: Qwen3ForCausalLM,
    style: BatchStyle,
    *,
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    name: str,
    progress: bool = True,
) -> float:
    """Train in place with AdamW and a warmup + cosine schedule; returns the last loss."""
    rng = random.Random(f"toy-train/{name}/{seed}")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        ),
    )
    model.train()
    loss_value = float("nan")
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress, leave=False)
    for _ in bar:
        examples = [encode(tokenizer, ex) for ex in sample_batch(rng, style, batch_size)]
        batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.4f}")
    model.eval()
    return loss_value


def save_model(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, card: str
) -> Path:
    out.mkdir(parents=True)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(card)
    return out


def train_pair(
    out: str | Path,
    recipe: Recipe | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Train and write ``out/{base,direct,thinking_concise,thinking}``; returns their paths.

    Everything is written into a temporary folder beside ``out`` and renamed into place
    at the end, so a failed or interrupted run leaves no half-written pair.
    """
    recipe = recipe or Recipe()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder for the pair")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    target = resolve_device(device)
    torch.manual_seed(seed)
    tokenizer = toy_tokenizer()
    model = Qwen3ForCausalLM(toy_config(tokenizer, recipe.size)).to(target)
    stage = partial(
        train_stage, tokenizer=tokenizer, batch_size=recipe.batch_size, seed=seed, progress=progress
    )
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as temp:
        staging = Path(temp) / "pair"
        base = partial(base_style, max_checks=recipe.base_max_checks)
        verbose = partial(verbose_style, checks=recipe.verbose_checks)
        stage(model, base, steps=recipe.base_steps, lr=recipe.lr, name="base")
        base_state = copy.deepcopy(model.state_dict())
        save_model(model, tokenizer, staging / "base", cards.training_card("base", recipe, seed))
        for name, style, steps in (
            ("direct", direct_style, recipe.direct_steps),
            ("thinking_concise", concise_style, recipe.concise_steps),
            ("thinking", verbose, recipe.verbose_steps),
        ):
            # thinking continues from thinking_concise: one trajectory, two checkpoints.
            if name != "thinking":
                model.to(target).load_state_dict(base_state)
            stage(model.to(target), style, steps=steps, lr=recipe.finetune_lr, name=name)
            save_model(model, tokenizer, staging / name, cards.training_card(name, recipe, seed))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return {name: out / name for name in PAIR_MODELS}
