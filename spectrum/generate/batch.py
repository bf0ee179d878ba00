"""Text generation behind one interface: conversations in, ``Generation`` records out.

``TransformersGenerator`` batches conversations with left padding (decoder-only models
continue from the right edge), samples with the per-model settings of the reasoning
studies (``DecodingSettings.for_model``), stops at EOS (``<|im_end|>`` for Qwen3) and counts
exactly the tokens each response generated, padding excluded. A response that used all
``max_new_tokens`` without emitting EOS is *truncated* (``finished=False``).

``VllmGenerator`` offers the same ``generate`` over the live merger's vLLM backend
(``spectrum.live.vllm.VllmLiveMerger``); ``generator_for(merger)`` picks the one that fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace

import torch

from spectrum.errors import UserError
from spectrum.generate.tags import THINK_END, THINK_START

# Qwen3's end-of-thinking text for budget forcing: at the budget, this closes the thinking
# block and the model answers from what it has thought so far.
QWEN3_THINK_END = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)


@dataclass(frozen=True)
class DecodingSettings:
    """Sampling settings, and the two baselines that make a thinking model cheaper without
    a merge: budget forcing (``think_budget``: thinking stops after that many generated
    tokens, ``think_end`` closes it, then the model answers) and NoThinking (an empty
    thinking block prefilled; ``<think>`` is never generated)."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_new_tokens: int = 32768
    do_sample: bool = True
    think_budget: int | None = None
    no_thinking: bool = False
    think_end: str = QWEN3_THINK_END

    @classmethod
    def for_model(cls, kind: str, **overrides) -> DecodingSettings:
        """Defaults of the MI study: the instruct model T=0.7/top_p=0.8; thinking and merged
        models T=0.6/top_p=0.95; top_k=20 for all. ``kind`` is direct, thinking or merged."""
        if kind == "direct":
            settings = cls(temperature=0.7, top_p=0.8, top_k=20)
        elif kind in ("thinking", "merged"):
            settings = cls()
        else:
            raise ValueError(f"unknown model kind {kind!r}; use direct, thinking or merged")
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def for_lam(cls, lam: float, **overrides) -> DecodingSettings:
        """λ = 0 is the direct parent itself; every other λ samples like a thinking model."""
        return cls.for_model("direct" if lam == 0 else "merged", **overrides)

    def __post_init__(self) -> None:
        if self.think_budget is not None and self.think_budget < 1:
            raise UserError(f"a thinking budget must be at least 1 token, not {self.think_budget}")
        if self.think_budget is not None and self.no_thinking:
            raise UserError("budget forcing and NoThinking are two baselines: pick one")

    def as_dict(self) -> dict:
        """The settings as stored with every sample; the baseline fields only when used, so
        the configuration ids of plain decoding stay what they always were."""
        data = asdict(self)
        if data["think_budget"] is None and not data["no_thinking"]:
            for key in ("think_budget", "no_thinking", "think_end"):
                del data[key]
        return data


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    finished: bool
    latency_s: float

    @property
    def thinks(self) -> bool:
        return THINK_END in self.text


def chat_prompts(
    tokenizer, conversations: list[list[dict]], settings: DecodingSettings | None = None
) -> list[str]:
    """Each conversation through the model's chat template, ready for the assistant turn;
    with ``no_thinking``, followed by an empty thinking block."""
    prompts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    if settings is not None and settings.no_thinking:
        prompts = [prompt + empty_think_block(prompt) for prompt in prompts]
    return prompts


def empty_think_block(prompt: str) -> str:
    """What closes thinking before it starts: Qwen3-Thinking templates already open
    ``<think>`` in the generation prompt, others need the whole empty block."""
    if prompt.endswith(f"{THINK_START}\n"):
        return f"\n{THINK_END}\n\n"
    return f"{THINK_START}\n\n{THINK_END}\n\n"


class TransformersGenerator:
    """Batched sampling from a transformers causal LM and its (chat-template) tokenizer."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 16,
        session: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        # ``session``: a live merger's session(), held per batch so no re-merge lands
        # half-way through a generation.
        self.session = session or nullcontext
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def generate(
        self,
        conversations: list[list[dict]],
        settings: DecodingSettings,
        n: int = 1,
        *,
        seed: int | None = None,
    ) -> list[Generation]:
        """``n`` samples per conversation, in order: conversation 0's n samples first.

        ``latency_s`` is the wall time of the batch a sample was generated in.
        """
        prompts = chat_prompts(self.tokenizer, conversations, settings)
        texts = [p for p in prompts for _ in range(n)]
        run = self._budget_batch if settings.think_budget is not None else self._batch
        out: list[Generation] = []
        for start in range(0, len(texts), self.batch_size):
            batch_seed = None if seed is None else seed + start
            out.extend(run(texts[start : start + self.batch_size], settings, batch_seed))
        return out

    def _batch(
        self, texts: list[str], settings: DecodingSettings, seed: int | None
    ) -> list[Generation]:
        prompts = [self._ids(text) for text in texts]
        generated, latency = self._decode(
            prompts, settings, settings.max_new_tokens, seed, ban_think=settings.no_thinking
        )
        return [
            self._record(tokens, [], [], settings.max_new_tokens, latency) for tokens in generated
        ]

    def _budget_batch(
        self, texts: list[str], settings: DecodingSettings, seed: int | None
    ) -> list[Generation]:
        """Budget forcing: think for at most ``think_budget`` tokens, close the thinking
        block with ``think_end`` where the budget ran out, then answer with what is left of
        ``max_new_tokens``."""
        think_end_id = self.tokenizer.convert_tokens_to_ids(THINK_END)
        if think_end_id is None or think_end_id == self.tokenizer.unk_token_id:
            raise UserError(f"budget forcing needs {THINK_END} to be one token of the tokenizer")
        budget = min(settings.think_budget, settings.max_new_tokens)
        prompts = [self._ids(text) for text in texts]
        thoughts, first = self._decode(prompts, settings, budget, seed, stop=(think_end_id,))
        forced = self._ids(settings.think_end)
        continuing, answers = [], {}
        for i, tokens in enumerate(thoughts):
            tokens = _through_first(tokens, {self.eos_id, think_end_id})
            thoughts[i] = tokens
            if tokens and tokens[-1] == self.eos_id:
                continue  # answered (without thinking) inside the budget
            closed = bool(tokens) and tokens[-1] == think_end_id
            answers[i] = [] if closed else forced
            continuing.append(i)
        answered, second = [], 0.0
        if continuing:
            rest = settings.max_new_tokens - min(len(thoughts[i]) for i in continuing)
            answered, second = self._decode(
                [prompts[i] + thoughts[i] + answers[i] for i in continuing],
                settings,
                rest,
                None if seed is None else seed + 1,
                ban_think=True,  # the answer follows the closed block: no second one
            )
        after = dict(zip(continuing, answered, strict=True))
        return [
            self._record(
                thoughts[i],
                answers.get(i, []),
                after.get(i, []),
                settings.max_new_tokens - len(thoughts[i]),
                first + second,
            )
            for i in range(len(texts))
        ]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _decode(
        self,
        prompts: list[list[int]],
        settings: DecodingSettings,
        max_new_tokens: int,
        seed: int | None,
        stop: tuple[int, ...] = (),
        *,
        ban_think: bool = False,
    ) -> tuple[list[list[int]], float]:
        """Generated token ids per prompt (right-padded by generate; cut by the caller)."""
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt", padding=True)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        if seed is not None:
            torch.manual_seed(seed)
        sampling = (
            dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
            if settings.do_sample
            else {}
        )
        think_start_id = self.tokenizer.convert_tokens_to_ids(THINK_START)
        if ban_think and think_start_id not in (None, self.tokenizer.unk_token_id):
            sampling["bad_words_ids"] = [[think_start_id]]  # no new thinking block
        with self.session():
            started = time.perf_counter()
            sequences = self.model.generate(
                **enc,
                do_sample=settings.do_sample,
                max_new_tokens=max_new_tokens,
                eos_token_id=[self.eos_id, *stop],
                pad_token_id=self.pad_id,
                **sampling,
            )
            latency = time.perf_counter() - started
        return sequences[:, enc["input_ids"].shape[1] :].tolist(), latency

    def _record(
        self, thought: list[int], forced: list[int], answer: list[int], room: int, latency: float
    ) -> Generation:
        """One response from its generated parts (``forced`` text was not generated).

        Sequences that stopped early are right-padded by generate(); the first EOS ends
        the response (it counts as generated, as in vLLM's token counts). ``room`` is how
        many tokens ``answer`` was allowed: a batch decodes to its longest allowance.
        """
        answer = answer[:room]
        tail = answer if (forced or answer) else thought
        finished = self.eos_id in tail
        if finished:
            cut = tail.index(self.eos_id) + 1
            answer, thought = (answer[:cut], thought) if tail is answer else ([], thought[:cut])
        text = self.tokenizer.decode(thought + forced + answer, skip_special_tokens=True)
        return Generation(text, len(thought) + len(answer), finished, latency)


def _through_first(tokens: list[int], stops: set[int]) -> list[int]:
    """``tokens`` up to and including the first of ``stops`` (all of them when none)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


class VllmGenerator:
    """The same ``generate`` on a ``VllmLiveMerger``: vLLM batches and pads by itself.

    vLLM reports why each sequence stopped: ``finish_reason == "length"`` is a truncation.
    tests/test_eval_generate_vllm.py checks it decodes as the transformers generator does.
    """

    def __init__(self, merger) -> None:
        self.merger = merger
        self.tokenizer = merger.llm.get_tokenizer()

    def generate(
        self,
        conversations: list[list[dict]],
        settings: DecodingSettings,
        n: int = 1,
        *,
        seed: int | None = None,
    ) -> list[Generation]:
        prompts = chat_prompts(self.tokenizer, conversations, settings)
        if settings.think_budget is not None:
            return self._budget(prompts, settings, n, seed)
        if not settings.do_sample:  # vLLM refuses n > 1 with greedy decoding: repeat instead
            prompts, n = [p for p in prompts for _ in range(n)], 1
        banned = dict(bad_words=[THINK_START]) if settings.no_thinking else {}
        params = self._params(settings, settings.max_new_tokens, n=n, seed=seed, **banned)
        started = time.perf_counter()
        outputs, _ = self.merger.generate(prompts, params)
        latency = time.perf_counter() - started
        return [
            Generation(o.text, len(o.token_ids), o.finish_reason != "length", latency)
            for request in outputs
            for o in request.outputs
        ]

    def _params(self, settings: DecodingSettings, max_tokens: int, **extra):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            top_k=settings.top_k if settings.do_sample else -1,
            max_tokens=max_tokens,
            **extra,
        )

    def _budget(
        self, prompts: list[str], settings: DecodingSettings, n: int, seed: int | None
    ) -> list[Generation]:
        """Budget forcing as the transformers generator does it, in two vLLM calls."""
        prompts = [p for p in prompts for _ in range(n)]
        seeds = [None if seed is None else seed + i for i in range(len(prompts))]
        budget = min(settings.think_budget, settings.max_new_tokens)
        think = [
            self._params(
                settings, budget, seed=s, stop=[THINK_END], include_stop_str_in_output=True
            )
            for s in seeds
        ]
        started = time.perf_counter()
        thoughts = [r.outputs[0] for r in self.merger.generate(prompts, think)[0]]
        pending = [
            i for i, o in enumerate(thoughts) if o.finish_reason == "length" or o.stop_reason
        ]
        forced = {i: "" if thoughts[i].stop_reason else settings.think_end for i in pending}
        answer_params = [
            self._params(
                settings,
                max(settings.max_new_tokens - len(thoughts[i].token_ids), 1),
                seed=None if seeds[i] is None else seeds[i] + 1,
                bad_words=[THINK_START],
            )
            for i in pending
        ]
        answers = {}
        if pending:
            texts = [prompts[i] + thoughts[i].text + forced[i] for i in pending]
            outputs, _ = self.merger.generate(texts, answer_params)
            answers = {i: r.outputs[0] for i, r in zip(pending, outputs, strict=True)}
        latency = time.perf_counter() - started
        out = []
        for i, thought in enumerate(thoughts):
            answer = answers.get(i)
            if answer is None:
                out.append(Generation(thought.text, len(thought.token_ids), True, latency))
                continue
            text = thought.text + forced[i] + answer.text
            tokens = len(thought.token_ids) + len(answer.token_ids)
            out.append(Generation(text, tokens, answer.finish_reason != "length", latency))
        return out


def generator_for(merger, *, batch_size: int = 16):
    """The generator for a live merger: vLLM when it runs a ``vllm.LLM`` (here, or in a
    worker process: ``spectrum.live.vllm_process``), else transformers."""
    if hasattr(merger, "generator"):
        return merger.generator()
    if hasattr(merger, "llm"):
        return VllmGenerator(merger)
    return TransformersGenerator(
        merger.model, merger.tokenizer, batch_size=batch_size, session=merger.session
    )
