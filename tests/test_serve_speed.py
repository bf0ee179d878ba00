"""What the serving and sweep speed-ups must not change.

- ``RowSampling`` draws hundreds of rows at once now; each row's token must still be
  ``torch.multinomial`` on that row's own probabilities from that row's own generator (the
  per-row code it replaced, written out here as the reference), whatever rows share the
  batch.
- ``SpectrumModel.onednn`` multiplies by another kernel: rows must still be the merged
  models' logits to float32 rounding, with their greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

from spectrum.generate.batch import DecodingSettings
from spectrum.live import LiveMerger
from spectrum.live.spectrum_generate import RowSampling
from spectrum.live.spectrum_model import SpectrumModel
from spectrum.merge import MergeSpec

SETTINGS = [
    DecodingSettings(temperature=0.7, top_p=0.8, top_k=20),
    DecodingSettings(temperature=0.6, top_p=0.95, top_k=20),
    DecodingSettings(do_sample=False),
    DecodingSettings(temperature=1.0, top_p=1.0, top_k=0),
    DecodingSettings(temperature=0.6, top_p=0.95, top_k=5),
]


def _reference_token(scores: torch.Tensor, settings: DecodingSettings, generator) -> int:
    """One row's token as the per-row sampler drew it: sorted candidates, temperature,
    top-k, top-p, then ``torch.multinomial``."""
    values, tokens = scores.float().sort(descending=True)
    if settings.top_k > 0:
        values, tokens = values[: settings.top_k], tokens[: settings.top_k]
    probs = torch.softmax(values / settings.temperature, dim=-1)
    before = probs.cumsum(0) - probs
    probs = torch.where(before < settings.top_p, probs, 0.0)
    return int(tokens[torch.multinomial(probs, 1, generator=generator)])


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_batched_draws_are_each_rows_own_multinomial(rows):
    settings = [SETTINGS[i % len(SETTINGS)] for i in range(rows)]
    seeds = [1000 + i for i in range(rows)]
    sampler = RowSampling(settings, seeds)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    scores_gen = torch.Generator().manual_seed(rows)
    for _ in range(6):  # several steps: each generator's stream advances as before
        scores = torch.randn(rows, 300, generator=scores_gen) * 3
        out = sampler(None, scores)
        for row, setting in enumerate(settings):
            if not setting.do_sample:
                assert torch.equal(out[row], scores[row])
                continue
            want = _reference_token(scores[row], setting, generators[row])
            assert int(out[row].argmax()) == want
            assert torch.isfinite(out[row]).sum() == 1


@torch.no_grad()
def test_onednn_rows_are_the_merged_models(tiny_pair):
    torch.set_num_threads(1)
    spectrum = SpectrumModel.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    spectrum.onednn = True
    assert spectrum.onednn
    live = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    lams = [0.0, 0.3, 0.5, 0.8, 1.0]
    ids = torch.randint(3, spectrum.model.config.vocab_size, (len(lams), 9),
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    logits = spectrum(ids, lams).logits
    tokens = spectrum.generate(ids, lams, do_sample=False, max_new_tokens=6)
    table = spectrum(ids, spectrum.strengths(lams)).logits  # a precomputed strengths table
    assert torch.equal(table, logits)
    for row, lam in enumerate(lams):
        live.set(MergeSpec("linear", lam))
        torch.testing.assert_close(logits[row], live.model(ids).logits[row], atol=1e-4, rtol=1e-4)
        merged = live.model.generate(ids, do_sample=False, max_new_tokens=6)
        assert torch.equal(tokens[row], merged[row]), f"λ={lam} greedy differs"


@torch.no_grad()
def test_a_batch_at_one_endpoint_runs_one_product_and_stays_exact(tiny_pair):
    """A batch whose rows all sit at λ 0 (or 1) multiplies by E₀ (E₁) alone: still the
    parent bit for bit, as are endpoint rows mixed with inner ones; inner rows are the
    merged models to rounding."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    spectrum = SpectrumModel.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    live = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    ids = torch.randint(3, spectrum.model.config.vocab_size, (4, 9),
                        generator=torch.Generator().manual_seed(5))  # fmt: skip
    parents = {
        lam: AutoModelForCausalLM.from_pretrained(tiny_pair[role]).eval()
        for lam, role in ((0.0, "direct"), (1.0, "thinking"))
    }
    for lams in ([0.0, 1.0, 1.0, 0.0], [0.0] * 4, [1.0] * 4, [1.0, 0.4, 0.0, 0.9]):
        logits = spectrum(ids, lams).logits
        for row, lam in enumerate(lams):
            if lam in parents:
                assert torch.equal(logits[row], parents[lam](ids).logits[row])
                continue
            live.set(MergeSpec("linear", lam))
            want = live.model(ids).logits[row]
            torch.testing.assert_close(logits[row], want, atol=1e-4, rtol=1e-4)
