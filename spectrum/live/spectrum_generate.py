"""Text generation from a ``SpectrumModel``: many (prompt, λ, decoding, seed) rows, one batch.

Rows of one batch may differ in λ *and* in decoding settings (the direct parent, λ = 0,
samples at T = 0.7 / top-p 0.8, merged models at T = 0.6 / top-p 0.95), which one
``generate()`` call cannot express; so sampling is done by ``RowSampling``, a logits
processor that draws each sampled row's token itself, with the row's settings and the
row's own random generator, and hands ``generate()`` (run greedy) scores where only that
token is finite. A row's draws therefore depend on its own seed and logits only: not on
its batch mates, the batch size or the order rows come in, so a seeded sample is
reproducible however a sweep is batched or resumed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from spectrum.generate.batch import DecodingSettings, Generation, TransformersGenerator
from spectrum.live.hf import LiveMerger
from spectrum.live.spectrum_model import SpectrumModel
from spectrum.merge.scope import MergeScope
from spectrum.merge.spec import MergeSpec


def unit_seed(*parts: object) -> int:
    """A 63-bit seed from any identifying parts, e.g. (seed, config id, problem, sample)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowSampling(LogitsProcessor):
    """Per-row temperature / top-k / top-p sampling, each row from its own CPU generator.

    Greedy rows pass through unchanged. Order as transformers' warpers: temperature,
    top-k, top-p; ``top_k = 0`` disables top-k. Draws happen on the CPU so a seed gives the
    same tokens on any device.
    """

    def __init__(self, settings: Sequence[DecodingSettings], seeds: Sequence[int]):
        self.settings = list(settings)
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        rows = [row for row, s in enumerate(self.settings) if s.do_sample]
        if not rows:
            return scores
        top_k = [self.settings[row].top_k for row in rows]
        width = scores.shape[-1] if min(top_k) <= 0 else min(max(top_k), scores.shape[-1])
        values, tokens = scores[rows].float().topk(width, dim=-1)
        values, tokens = values.cpu(), tokens.cpu()
        # Rows of equal settings are drawn together: one softmax for all of them, and per
        # row only its own generator's noise (hundreds of sampled rows in a sweep's batch).
        groups: dict[tuple[int, float, float], list[int]] = {}
        for index, row in enumerate(rows):
            s = self.settings[row]
            groups.setdefault((s.top_k, s.temperature, s.top_p), []).append(index)
        drawn = torch.empty(len(rows), dtype=torch.long)
        for key, members in groups.items():
            chosen = self._draw(values[members], key, [self.generators[rows[i]] for i in members])
            drawn[members] = tokens[members].gather(1, chosen[:, None])[:, 0]
        out = scores.clone()
        index = torch.tensor(rows, device=scores.device)
        out[index] = -torch.inf
        out[index, drawn.to(scores.device)] = 0.0
        return out

    @staticmethod
    def _draw(
        values: Tensor, settings: tuple[int, float, float], generators: list[torch.Generator]
    ) -> Tensor:
        """One candidate index per row of ``values`` (candidates sorted by descending
        score), all rows sharing (top_k, temperature, top_p).

        The draw is ``torch.multinomial(probs, 1, generator)``'s own, written out: it
        takes q ~ Exp(1) of the row's width from the generator and returns argmax(p / q)
        (PyTorch's fast path for one sample; tests/test_serve_speed.py checks the two
        agree). Written out, the rows' noise fills one tensor and the rest runs once.
        """
        top_k, temperature, top_p = settings
        if top_k > 0:
            values = values[:, :top_k]
        probs = torch.softmax(values / temperature, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of the better tokens: top-p keeps while < p
        probs = torch.where(before < top_p, probs, 0.0)
        noise = torch.empty_like(probs)
        for row, generator in enumerate(generators):
            noise[row].exponential_(1, generator=generator)
        return (probs / noise).argmax(dim=-1)


class RemergedSpectrum:
    """What ``SpectrumGenerator`` needs of a spectrum model, served by a live merger that
    re-merges for each λ: the fallback for a pair or method the spectrum model cannot
    serve. Rows of one call must share their λ (``SpectrumGenerator`` with batch size 1)."""

    def __init__(
        self,
        merger: LiveMerger,
        *,
        method: str,
        params: dict,
        seed: int,
        scope: MergeScope,
    ) -> None:
        self.merger, self.method, self.params, self.seed = merger, method, params, seed
        self.scope = scope
        self.model, self.tokenizer = merger.model, merger.tokenizer

    @property
    def device(self) -> torch.device:
        return self.merger.device

    def spec(self, lam: float) -> dict:
        return dict(
            method=self.method, lam=lam, params=self.params, seed=self.seed,
            scope=self.scope.describe(),
        )  # fmt: skip

    def generate(self, input_ids: Tensor, lams: Sequence[float], **kwargs) -> Tensor:
        if len(set(lams)) != 1:
            raise ValueError("a re-merged batch runs at one λ")
        spec = MergeSpec(
            self.method, lams[0], self.params, layers=self.scope.layers,
            modules=self.scope.modules, lam_schedule=self.scope.lam_schedule, seed=self.seed,
        )  # fmt: skip
        self.merger.set(spec)
        with self.merger.session():
            return self.model.generate(input_ids=input_ids, **kwargs)


class SpectrumGenerator(TransformersGenerator):
    """``TransformersGenerator``'s batching, padding and records, one λ per row."""

    def __init__(self, spectrum: SpectrumModel | RemergedSpectrum, *, batch_size: int = 16):
        super().__init__(spectrum.model, spectrum.tokenizer, batch_size=batch_size)
        self.spectrum = spectrum

    def generate_rows(
        self,
        prompts: Sequence[str],
        lams: Sequence[float],
        settings: Sequence[DecodingSettings],
        seeds: Sequence[int],
    ) -> list[Generation]:
        """One generation per row: ``prompts[i]`` (chat-templated) at ``lams[i]``, sampled
        (or greedy) by ``settings[i]`` from ``seeds[i]``; ``batch_size`` rows per batch."""
        if len({s.max_new_tokens for s in settings}) > 1:
            raise ValueError("rows of one spectrum batch must share max_new_tokens")
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            rows = slice(start, start + self.batch_size)
            out.extend(self._rows(prompts[rows], lams[rows], settings[rows], seeds[rows]))
        return out

    @torch.inference_mode()
    def _rows(self, prompts, lams, settings, seeds) -> list[Generation]:
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True,
                             add_special_tokens=False)  # fmt: skip
        enc = {key: value.to(self.spectrum.device) for key, value in enc.items()}
        started = time.perf_counter()
        sequences = self.spectrum.generate(
            enc["input_ids"],
            list(lams),
            attention_mask=enc["attention_mask"],
            do_sample=False,  # RowSampling has already drawn the sampled rows' tokens
            logits_processor=LogitsProcessorList([RowSampling(settings, seeds)]),
            max_new_tokens=settings[0].max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        latency = time.perf_counter() - started
        new_tokens = sequences[:, enc["input_ids"].shape[1] :].tolist()
        room = settings[0].max_new_tokens
        return [self._record([(tokens, False)], [], room, latency) for tokens in new_tokens]
