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

from spectrum.generate.tags import THINK_END


@dataclass(frozen=True)
class DecodingSettings:
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_new_tokens: int = 32768
    do_sample: bool = True

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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    finished: bool
    latency_s: float

    @property
    def thinks(self) -> bool:
        return THINK_END in self.text


def chat_prompts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Each conversation through the model's chat template, ready for the assistant turn."""
    return [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]


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
        texts = [p for p in chat_prompts(self.tokenizer, conversations) for _ in range(n)]
        out: list[Generation] = []
        for start in range(0, len(texts), self.batch_size):
            batch_seed = None if seed is None else seed + start
            out.extend(self._batch(texts[start : start + self.batch_size], settings, batch_seed))
        return out

    @torch.inference_mode()
    def _batch(
        self, texts: list[str], settings: DecodingSettings, seed: int | None
    ) -> list[Generation]:
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        if seed is not None:
            torch.manual_seed(seed)
        sampling = (
            dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
            if settings.do_sample
            else {}
        )
        with self.session():
            started = time.perf_counter()
            sequences = self.model.generate(
                **enc,
                do_sample=settings.do_sample,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                **sampling,
            )
            latency = time.perf_counter() - started
        new_tokens = sequences[:, enc["input_ids"].shape[1] :].tolist()
        return [self._record(tokens, settings, latency) for tokens in new_tokens]

    def _record(self, tokens: list[int], settings: DecodingSettings, latency: float) -> Generation:
        # Sequences that stopped early are right-padded by generate(); the first EOS ends
        # the response (it counts as generated, as in vLLM's token counts).
        if self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id) + 1]
            finished = True
        else:
            finished = False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generation(text=text, n_tokens=len(tokens), finished=finished, latency_s=latency)


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
        from vllm import SamplingParams

        prompts = chat_prompts(self.tokenizer, conversations)
        if not settings.do_sample:  # vLLM refuses n > 1 with greedy decoding: repeat instead
            prompts, n = [p for p in prompts for _ in range(n)], 1
        params = SamplingParams(
            n=n,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            top_k=settings.top_k if settings.do_sample else -1,
            max_tokens=settings.max_new_tokens,
            seed=seed,
        )
        started = time.perf_counter()
        outputs, _ = self.merger.generate(prompts, params)
        latency = time.perf_counter() - started
        return [
            Generation(o.text, len(o.token_ids), o.finish_reason != "length", latency)
            for request in outputs
            for o in request.outputs
        ]


def generator_for(merger, *, batch_size: int = 16):
    """The generator for a live merger: vLLM when it runs a ``vllm.LLM``, else transformers."""
    if hasattr(merger, "llm"):
        return VllmGenerator(merger)
    return TransformersGenerator(
        merger.model, merger.tokenizer, batch_size=batch_size, session=merger.session
    )
