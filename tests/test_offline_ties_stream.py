"""TIES streamed in slices: its two per-tensor trim thresholds come from passes over the
slices (``sliced_thresholds``), then each slice merges alone; the bytes equal a
whole-tensor merge and the thresholds equal an exact sort."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectrum.merge import merge_tensors
from spectrum.methods import Parents, get_method, resolve_params
from spectrum.methods.common.base import CHUNK
from spectrum.methods.common.magnitude import sliced_thresholds

NAME = "model.layers.0.mlp.up_proj.weight"
SHAPE = (5, CHUNK // 2 + 7)  # 2.5 slices with a ragged tail


def _parents(seed: int) -> dict[str, torch.Tensor]:
    """bf16 base/direct/thinking; the direct task vector repeats magnitudes (ties at the
    threshold) and holds zeros, as rounded fine-tunes do."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=generator).to(torch.bfloat16)
    thinking = (base.float() + 0.01 * torch.randn(SHAPE, generator=generator)).bfloat16()
    steps = torch.randint(-3, 4, SHAPE, generator=generator).float() * 0.0625
    direct = (base.float() + steps).bfloat16()
    return {"direct": direct, "thinking": thinking, "base": base}


def _kth_largest(values: np.ndarray, fraction: float) -> float | None:
    """The oracle: sort, and take the round-half-up count-th largest magnitude."""
    count = math.floor(fraction * values.size + 0.5)
    return None if count == 0 else float(np.sort(np.abs(values).ravel())[::-1][count - 1])


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_sliced_thresholds_equal_an_exact_sort(fraction):
    tensors = _parents(1)
    taus = [(tensors[role].float() - tensors["base"].float()).reshape(-1) for role in
            ("direct", "thinking")]  # fmt: skip
    bounds = [0, 1000, CHUNK, CHUNK + 3, taus[0].numel()]  # uneven slices on purpose

    def magnitudes():
        for start, stop in zip(bounds, bounds[1:], strict=False):
            yield tuple(tau[start:stop].abs() for tau in taus)

    found = sliced_thresholds(magnitudes, fraction)
    assert found == [_kth_largest(tau.numpy(), fraction) for tau in taus]


@pytest.mark.parametrize("tie_break", ["zero", "plus"])
@pytest.mark.parametrize("lam", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.8, 1.0])
def test_streamed_ties_equals_the_whole_tensor_merge(density, lam, tie_break):
    tensors = _parents(2)
    dicts = {role: {NAME: tensor} for role, tensor in tensors.items()}
    params = {"density": density, "tie_break": tie_break}
    merged = merge_tensors(dicts["direct"], dicts["thinking"], dicts["base"], method="ties",
                           lam=lam, params=params)[NAME]  # fmt: skip
    ties = get_method("ties")
    resolved = resolve_params(ties, params)
    whole = Parents(NAME, *(tensors[role].float() for role in ("direct", "thinking", "base")))
    expected = ties.apply(ties.prepare(whole, resolved, 0), lam, resolved, None)
    assert torch.equal(merged.view(torch.int16), expected.bfloat16().view(torch.int16))
    if 0.0 < density < 1.0:  # the trim really cut: some positions keep θ_B exactly
        kept_base = (merged == tensors["base"]) & (tensors["direct"] != tensors["base"])
        assert kept_base.any()


def test_the_engine_reads_ties_parents_only_in_slices():
    """No pass asks a source for a whole tensor: memory holds slices, not float32 copies."""
    from spectrum.merge.engine import _MappingSource, merge_stream
    from spectrum.merge.spec import MergeSpec

    class CountingSource(_MappingSource):
        """The real tensors, counting whole-tensor and slice reads."""

        def __init__(self, tensors):
            super().__init__(tensors)
            self.whole_reads, self.slice_reads = 0, 0

        def get(self, name):
            self.whole_reads += 1
            return super().get(name)

        def get_slice(self, name, start, stop):
            self.slice_reads += 1
            return super().get_slice(name, start, stop)

    tensors = _parents(3)
    sources = {role: CountingSource({NAME: tensor}) for role, tensor in tensors.items()}
    spec = MergeSpec("ties", 0.4, {"density": 0.5}).checked(has_base=True)
    pieces = list(merge_stream(sources["direct"], sources["thinking"], sources["base"], spec,
                               [NAME], 1))  # fmt: skip
    slices = math.ceil(math.prod(SHAPE) / CHUNK)
    assert len(pieces) == slices and all(p.numel() <= CHUNK for _, p in pieces)
    for source in sources.values():
        assert source.whole_reads == 0
        # two threshold passes (coarse counts, then the threshold's bucket) and the merge
        assert source.slice_reads == 3 * slices
