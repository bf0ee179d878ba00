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
from dataclasses import asdict, dataclass, field, replace

import torch

from spectrum.errors import UserError
from spectrum.generate.tags import THINK_END, THINK_START

# Qwen3's own end-of-thinking sentence: offered to users who ask for it (``--think-end``);
# the default closes thinking with the pair's own delimiter (docs/METHODS.md, baselines).
QWEN3_THINK_END = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)
# s1 (Muennighoff et al. 2025): at the budget, the end-of-thinking delimiter and an answer
# cue; to think longer, the delimiter is suppressed and "Wait" appended instead.
ANSWER_CUE = "Final Answer:"
WAIT = "Wait"
# NoThinking (Ma et al. 2025): the thinking block is prefilled with this and closed.
NO_THINKING_TEXT = "Okay, I think I have finished thinking."


# Integers stored in the results DB's INTEGER columns (top_k, max_new_tokens, merge_seed,
# ...) must fit them: a value that does not would fail only after its generation.
INT_COLUMN_MAX = 2**31 - 1


def _check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    """Sampling values in range: temperature ≥ 0, 0 < top-p ≤ 1, 0 ≤ top-k (0: no top-k)."""
    if not (isinstance(temperature, int | float) and 0 <= temperature < float("inf")):
        raise UserError(f"temperature must be a number ≥ 0, not {temperature}")
    if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise UserError(f"top-p must be in (0, 1], not {top_p}")
    if not (isinstance(top_k, int) and 0 <= top_k <= INT_COLUMN_MAX):
        raise UserError(f"top-k must be an integer between 0 and {INT_COLUMN_MAX}, not {top_k}")


@dataclass(frozen=True)
class DecodingSettings:
    """Sampling settings, and the two baselines that make a thinking model cheaper without
    a merge, as their authors define them:

    * budget forcing (s1): thinking stops after ``think_budget`` generated tokens; the
      end-of-thinking text (``think_end``; None: the pair's own delimiter) and the answer
      cue (``answer_cue``) are appended, then the model answers. ``think_waits``: the
      first that many times the model ends its thinking inside the budget, the delimiter
      is dropped and "Wait" appended, so it thinks on.
    * NoThinking (Ma et al.): the thinking block is prefilled with "Okay, I think I have
      finished thinking." and closed; ``<think>`` is never generated.
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_new_tokens: int = 32768
    do_sample: bool = True
    think_budget: int | None = None
    no_thinking: bool = False
    think_end: str | None = None
    think_waits: int = 0
    answer_cue: str = ANSWER_CUE
    # NoThinking's prefill; stored with the settings, so rows of the earlier empty-block
    # NoThinking keep configuration ids of their own.
    no_thinking_text: str = NO_THINKING_TEXT

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
        _check_sampling(self.temperature, self.top_p, self.top_k)
        if not 1 <= self.max_new_tokens <= INT_COLUMN_MAX:
            raise UserError(
                f"max new tokens must be between 1 and {INT_COLUMN_MAX}, not {self.max_new_tokens}"
            )
        if self.temperature == 0 and self.do_sample:
            # Temperature 0 is the limit of sampling: the most likely token, i.e. greedy
            # (sampling would divide the logits by zero).
            object.__setattr__(self, "do_sample", False)
        if self.think_budget is not None and self.think_budget < 1:
            raise UserError(f"a thinking budget must be at least 1 token, not {self.think_budget}")
        if self.think_budget is not None and self.no_thinking:
            raise UserError("budget forcing and NoThinking are two baselines: pick one")
        if self.think_waits < 0:
            raise UserError(f"--budget-waits must be at least 0, not {self.think_waits}")
        if self.think_waits and self.think_budget is None:
            raise UserError("--budget-waits extends budget forcing: give --budgets too")

    def as_dict(self) -> dict:
        """The settings as stored with every sample; the baseline fields only when used, so
        the configuration ids of plain decoding stay what they always were."""
        data = asdict(self)
        if data["think_budget"] is None:
            for key in ("think_budget", "think_end", "think_waits", "answer_cue"):
                del data[key]
        if not data["no_thinking"]:
            del data["no_thinking"], data["no_thinking_text"]
        return data

    def closing_text(self) -> str:
        """What budget forcing appends where the budget runs out: the end of thinking
        (``think_end``, else the pair's delimiter on its own line) and the answer cue."""
        close = self.think_end if self.think_end is not None else f"\n{THINK_END}\n\n"
        return close + self.answer_cue


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int  # every token of the response: generated and inserted
    finished: bool
    latency_s: float
    n_inserted: int = 0  # tokens the generator inserted (budget forcing's close, cue, Waits)

    @property
    def thinks(self) -> bool:
        return THINK_END in self.text


def chat_prompts(
    tokenizer,
    conversations: list[list[dict]],
    settings: DecodingSettings | None = None,
    template: str | None = None,
) -> list[str]:
    """Each conversation through the chat template, ready for the assistant turn; with
    ``no_thinking``, followed by NoThinking's prefilled thinking block.

    ``template``: a chat template (Jinja text) to use instead of the tokenizer's own: the
    template of the parent whose files a merged model's export carries."""
    prompts = [
        tokenizer.apply_chat_template(
            c, tokenize=False, add_generation_prompt=True, chat_template=template
        )
        for c in conversations
    ]
    if settings is not None and settings.no_thinking:
        prompts = [
            prompt + finished_think_block(prompt, settings.no_thinking_text) for prompt in prompts
        ]
    return prompts


def finished_think_block(prompt: str, text: str = NO_THINKING_TEXT) -> str:
    """NoThinking's prefill: "Okay, I think I have finished thinking." in a closed thinking
    block; templates that open ``<think>`` in the generation prompt (Qwen3-Thinking-2507)
    get only the rest of the block."""
    opened = prompt.rstrip("\n").endswith(THINK_START)
    body = f"{text}\n{THINK_END}\n\n"
    if opened:
        return body if prompt.endswith("\n") else f"\n{body}"
    return f"{THINK_START}\n{body}"


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
        template: str | None = None,
    ) -> list[Generation]:
        """``n`` samples per conversation, in order: conversation 0's n samples first.

        ``latency_s`` is the wall time of the batch a sample was generated in;
        ``template``: the chat template to use (default: the tokenizer's).
        """
        prompts = chat_prompts(self.tokenizer, conversations, settings, template)
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
            self._record([(tokens, False)], [], settings.max_new_tokens, latency)
            for tokens in generated
        ]

    def _budget_batch(
        self, texts: list[str], settings: DecodingSettings, seed: int | None
    ) -> list[Generation]:
        """Budget forcing (s1): think for at most ``think_budget`` generated tokens; a
        thought that ends early is extended with "Wait" up to ``think_waits`` times; where
        the budget runs out, the closing text and answer cue are appended; then the model
        answers with what is left of ``max_new_tokens``."""
        think_end_id = self._think_end_id()
        budget = min(settings.think_budget, settings.max_new_tokens)
        prompts = [self._ids(text) for text in texts]
        thinking = [_Thought() for _ in texts]
        latency, step = 0.0, 0
        while active := [i for i, t in enumerate(thinking) if t.open]:
            room = {i: budget - thinking[i].generated for i in active}
            decoded, spent = self._decode(
                [prompts[i] + thinking[i].tokens() for i in active],
                settings,
                max(room.values()),
                None if seed is None else seed + step,
                stop=(think_end_id,),
            )
            latency, step = latency + spent, step + 1
            for i, tokens in zip(active, decoded, strict=True):
                tokens = _through_first(tokens[: room[i]], {self.eos_id, think_end_id})
                self._think_on(thinking[i], tokens, think_end_id, budget, settings)
        answering = [i for i, t in enumerate(thinking) if t.answers]
        answers: dict[int, list[int]] = {}
        if answering:
            rest = settings.max_new_tokens - min(thinking[i].generated for i in answering)
            decoded, spent = self._decode(
                [prompts[i] + thinking[i].tokens() for i in answering],
                settings,
                rest,
                None if seed is None else seed + step,
                ban_think=True,  # the answer follows the closed block: no second one
            )
            latency += spent
            answers = dict(zip(answering, decoded, strict=True))
        return [
            self._record(
                thinking[i].parts,
                answers.get(i, []),
                settings.max_new_tokens - thinking[i].generated,
                latency,
            )
            for i in range(len(texts))
        ]

    def _think_on(
        self,
        thought: _Thought,
        tokens: list[int],
        think_end_id: int,
        budget: int,
        settings: DecodingSettings,
    ) -> None:
        """One more stretch of thinking: ended by EOS (answered inside the budget), by the
        delimiter (accepted, or replaced by "Wait" while Waits are left), or by the budget
        (closed with the closing text and answer cue)."""
        thought.generated += len(tokens)
        if tokens and tokens[-1] == self.eos_id:
            thought.parts.append((tokens, False))
            thought.open = thought.answers = False
        elif tokens and tokens[-1] == think_end_id:
            if thought.waits < settings.think_waits and thought.generated < budget:
                # The delimiter is dropped, so it is not part of the response.
                thought.generated -= 1
                thought.parts += [(tokens[:-1], False), (self._ids(WAIT), True)]
                thought.waits += 1
                return
            thought.parts.append((tokens, False))
            thought.open = False
        else:
            thought.parts += [(tokens, False), (self._ids(settings.closing_text()), True)]
            thought.open = False

    def _think_end_id(self) -> int:
        """The pair's own end-of-thinking delimiter: one token of its tokenizer."""
        token_id = self.tokenizer.convert_tokens_to_ids(THINK_END)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise UserError(f"budget forcing needs {THINK_END} to be one token of the tokenizer")
        return token_id

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
        if ban_think:  # the block is closed: neither a new one nor a second close
            tags = [self.tokenizer.convert_tokens_to_ids(tag) for tag in (THINK_START, THINK_END)]
            known = [[t] for t in tags if t not in (None, self.tokenizer.unk_token_id)]
            if known:
                sampling["bad_words_ids"] = known
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
        self, parts: list[tuple[list[int], bool]], answer: list[int], room: int, latency: float
    ) -> Generation:
        """One response from its parts (token ids, whether inserted rather than generated)
        and the answer after them.

        Sequences that stopped early are right-padded by generate(); the first EOS ends
        the response (it counts as generated, as in vLLM's token counts). ``room`` is how
        many tokens ``answer`` was allowed: a batch decodes to its longest allowance.
        """
        answer = answer[: max(room, 0)]
        if answer or any(inserted for _, inserted in parts):
            finished = self.eos_id in answer
            if finished:
                answer = answer[: answer.index(self.eos_id) + 1]
        else:  # no answer phase: the last generated part ends the response
            last = parts[-1][0] if parts else []
            finished = self.eos_id in last
            if finished:
                parts = [*parts[:-1], (last[: last.index(self.eos_id) + 1], False)]
        tokens = [t for part, _ in parts for t in part] + answer
        inserted = sum(len(part) for part, flag in parts if flag)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generation(text, len(tokens), finished, latency, inserted)


@dataclass
class _Thought:
    """One response's thinking under budget forcing, stretch by stretch."""

    parts: list[tuple[list[int], bool]] = field(default_factory=list)  # (ids, inserted)
    generated: int = 0  # thinking tokens the model generated (what the budget counts)
    waits: int = 0
    open: bool = True  # still thinking
    answers: bool = True  # an answer phase follows (False: EOS came inside the budget)

    def tokens(self) -> list[int]:
        return [t for part, _ in self.parts for t in part]


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
        template: str | None = None,
    ) -> list[Generation]:
        prompts = chat_prompts(self.tokenizer, conversations, settings, template)
        if settings.think_budget is not None:
            return self._budget(prompts, settings, n, seed)
        if not settings.do_sample:  # vLLM refuses n > 1 with greedy decoding: repeat instead
            prompts, n = [p for p in prompts for _ in range(n)], 1
        banned = dict(bad_words=[THINK_START, THINK_END]) if settings.no_thinking else {}
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
        """Budget forcing as the transformers generator does it: vLLM calls per stretch of
        thinking (stopped at the delimiter, which is replaced by "Wait" while Waits are
        left), the closing text and cue at the budget, then one call for the answers."""
        prompts = [p for p in prompts for _ in range(n)]
        seeds = [None if seed is None else seed + i for i in range(len(prompts))]
        budget = min(settings.think_budget, settings.max_new_tokens)
        texts = ["" for _ in prompts]
        generated, inserted, waits = [0] * len(prompts), [0] * len(prompts), [0] * len(prompts)
        finished: dict[int, bool] = {}  # answered inside the budget (EOS or length)
        answering: list[int] = []
        started, step = time.perf_counter(), 0
        active = list(range(len(prompts)))
        while active:
            params = [
                self._params(
                    settings,
                    budget - generated[i],
                    seed=None if seeds[i] is None else seeds[i] + step,
                    stop=[THINK_END],
                    include_stop_str_in_output=True,
                )
                for i in active
            ]
            outputs, _ = self.merger.generate([prompts[i] + texts[i] for i in active], params)
            step, still = step + 1, []
            for i, request in zip(active, outputs, strict=True):
                out = request.outputs[0]
                generated[i] += len(out.token_ids)
                if (
                    out.stop_reason == THINK_END
                    and waits[i] < settings.think_waits
                    and (generated[i] < budget)
                ):
                    generated[i] -= 1  # the delimiter is dropped from the response
                    texts[i] += out.text[: -len(THINK_END)] + WAIT
                    inserted[i] += self._count(WAIT)
                    waits[i] += 1
                    still.append(i)
                elif out.stop_reason == THINK_END:
                    texts[i] += out.text
                    answering.append(i)
                elif out.finish_reason == "length":  # the budget ran out
                    texts[i] += out.text + settings.closing_text()
                    inserted[i] += self._count(settings.closing_text())
                    answering.append(i)
                else:  # EOS inside the budget: answered without closing the block
                    texts[i] += out.text
                    finished[i] = True
            active = still
        answers = self._answers(prompts, texts, generated, answering, settings, seeds, step)
        latency = time.perf_counter() - started
        out = []
        for i, text in enumerate(texts):
            answer = answers.get(i)
            tokens = generated[i] + inserted[i] + (len(answer.token_ids) if answer else 0)
            done = finished.get(i, answer is not None and answer.finish_reason != "length")
            out.append(
                Generation(text + (answer.text if answer else ""), tokens, done, latency,
                           inserted[i])
            )  # fmt: skip
        return out

    def _answers(self, prompts, texts, generated, answering, settings, seeds, step) -> dict:
        """The answer after each closed thinking block, with what is left of the tokens."""
        if not answering:
            return {}
        params = [
            self._params(
                settings,
                max(settings.max_new_tokens - generated[i], 1),
                seed=None if seeds[i] is None else seeds[i] + step,
                bad_words=[THINK_START, THINK_END],
            )
            for i in answering
        ]
        outputs, _ = self.merger.generate([prompts[i] + texts[i] for i in answering], params)
        return {i: r.outputs[0] for i, r in zip(answering, outputs, strict=True)}

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


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
