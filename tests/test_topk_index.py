"""A new Top-K k without a pass: ``MagnitudeThreshold.index()`` and the live merger using it.

Checked against an independent rule (numpy's sort of every magnitude: the count-th largest,
count = round half up of k·N) and against the offline merge, byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectrum.live import LiveMerger
from spectrum.merge import MergeSpec, merge_tensors
from spectrum.methods.common.magnitude import MagnitudeThreshold
from tests.test_live import assert_bytes_equal, model_in_checkpoint_names, read_folder

torch.set_num_threads(1)


def expected_threshold(values: np.ndarray, k: float) -> float | None:
    count = int(np.floor(k * values.size + 0.5))
    return None if count == 0 else float(np.sort(values)[::-1][count - 1])


def awkward_magnitudes() -> list[torch.Tensor]:
    """Several tensors: ties across them, zeros, subnormals, values sharing a coarse bucket
    (high 16 bits) in different tensors, an infinity (|Δ| of two huge finite parents)."""
    generator = torch.Generator().manual_seed(5)
    one_bucket = 1.0 + torch.arange(300, dtype=torch.float32) * 2**-20  # all bits 0x3F80....
    return [
        torch.randn(5000, generator=generator).abs(),
        torch.tensor([0.0, 0.0, 1e-44, 3e-39, 1.0, 1.0, 2.5, float("inf")]),
        one_bucket[torch.randperm(300, generator=generator)],
        torch.randn(3, 7, generator=generator).abs(),
        one_bucket[::7].clone(),
        torch.zeros(0),
    ]


def test_indexed_thresholds_equal_the_sorted_rule_and_the_refined_ones():
    tensors = awkward_magnitudes()
    values = np.concatenate([t.reshape(-1).numpy() for t in tensors])
    passes = []

    def stream():
        passes.append(1)
        return iter(tensors)

    indexed, refined = MagnitudeThreshold(stream), MagnitudeThreshold(lambda: iter(tensors))
    indexed.index()
    assert len(passes) == 2  # the coarse counts, then the sort
    fractions = [*np.linspace(0, 1, 101), 1 / values.size, 0.5 / values.size, 0.0511]
    for k in fractions:
        expected = expected_threshold(values, float(k))
        assert indexed.threshold(float(k)) == expected == refined.threshold(float(k)), k
    assert len(passes) == 2  # no k needed another pass


def test_index_holds_the_bucket_that_several_tensors_share():
    tensors = awkward_magnitudes()
    values = np.concatenate([t.reshape(-1).numpy() for t in tensors])
    threshold = MagnitudeThreshold(lambda: iter(tensors))
    threshold.index()
    # Every rank from just above the shared 1.0… bucket down past its lowest value, one by
    # one: the 300 + 43 values of two tensors, the second tensor's 1.0s, random ones.
    above = int((values >= 1.0 + 300 * 2**-20).sum())
    for count in range(max(above - 5, 1), int((values >= 1.0).sum()) + 5):
        k = (count - 0.25) / values.size  # round half up gives exactly count
        assert threshold.threshold(k) == float(np.sort(values)[::-1][count - 1]), count


@pytest.fixture(scope="module")
def parents(tiny_pair):
    return {role: read_folder(path) for role, path in tiny_pair.items()}


@pytest.mark.parametrize("method", ["topk_replace", "avg_topk_override"])
def test_live_new_k_equals_the_offline_merge_without_a_pass(tiny_pair, parents, method):
    merger = LiveMerger.load(
        tiny_pair["direct"], tiny_pair["thinking"], tiny_pair["base"], device="cpu"
    )
    merger.set(MergeSpec(method, 0.5))
    stats = merger._prepared._stats
    # Made for the k it was asked: counted (histogram and one refinement), not sorted.
    assert isinstance(stats, MagnitudeThreshold) and stats._sorted is None
    merger.set(MergeSpec(method, 0.5, layers="0"))  # another scope: counted again
    assert merger._prepared._stats is not stats and merger._prepared._stats._sorted is None
    merger.set(MergeSpec(method, 0.5))
    stats = merger._prepared._stats
    refined = set(stats._fine)  # the warm-up k's bucket, refined by global_stats
    for k in (0.05, 0.3, 0.31, 0.77, 1.0, 0.0):  # the first new k sorts, once
        merger.set(MergeSpec(method, k))
        expected = merge_tensors(
            parents["direct"], parents["thinking"], parents["base"], method=method, lam=k
        )
        assert_bytes_equal(model_in_checkpoint_names(merger.model), expected)
    assert stats._sorted is not None and merger.index_bytes == 4 * stats.total
    assert set(stats._fine) == refined  # every new k was looked up, none refined by a pass


# ---------------------------------------------------------------- TIES: a new density


def test_ties_trim_from_the_index_equals_the_counted_trim_and_the_sorted_rule():
    from spectrum.methods import Parents, ties

    generator = torch.Generator().manual_seed(9)
    n = (1 << 18) + 777  # more than one block
    base = torch.randn(n, generator=generator)
    parent = base + torch.randn(n, generator=generator)
    parent[:300] = base[:300] + 0.5  # ties at many thresholds
    parent[300:400] = base[300:400]  # τ = 0
    parent[400:420] = -0.0
    base[400:410] = 0.0  # τ = −0 − 0 = −0
    parent[420:440] = base[420:440] + 1e-44 * (base[420:440] == 0)  # subnormal-sized steps
    kept = ties.index(Parents("w", parent, parent, base))
    tau = (parent - base).numpy()
    magnitudes = np.sort(np.abs(tau))[::-1]
    for density in (0.0, 1e-6, 0.1, 0.25, 0.5, 0.8, 0.999, 1.0):
        params = {"density": density}
        indexed = Parents("w", parent, parent, base, index=kept)
        from_index = ties.prepare(indexed, params, 0)["trimmed_direct"]
        # Without the index the thresholds are counted over the tensor's slices.
        counted = ties.prepare(Parents("w", parent, parent, base), params, 0)["trimmed_direct"]
        assert torch.equal(from_index.view(torch.int32), counted.view(torch.int32)), density
        count = int(np.floor(density * n + 0.5))
        keep = np.abs(tau) >= magnitudes[count - 1] if count else np.zeros(n, dtype=bool)
        np.testing.assert_array_equal(from_index.numpy(), np.where(keep, tau, 0.0).astype("f4"))


def test_live_ties_new_density_equals_the_offline_merge_and_reuses_the_index(tiny_pair, parents):
    merger = LiveMerger.load(
        tiny_pair["direct"], tiny_pair["thinking"], tiny_pair["base"], device="cpu"
    )
    merger.set(MergeSpec("ties", 0.5))
    assert "ties" not in merger._indexes and merger.index_bytes == 0  # a first preparation
    made = None
    cases = ((0.5, 0.3, "zero"), (0.2, 0.55, "plus"), (0.9, 1.0, "zero"), (0.5, 0.8, "zero"))
    for lam, density, tie_break in cases:
        params = {"density": density, "tie_break": tie_break}
        merger.set(MergeSpec("ties", lam, params=params))
        expected = merge_tensors(
            parents["direct"],
            parents["thinking"],
            parents["base"],
            method="ties",
            lam=lam,
            params=params,
        )
        assert_bytes_equal(model_in_checkpoint_names(merger.model), expected)
        kept = merger._indexes["ties"]
        # Made by the first new density (held: the same objects later = not made again).
        made = made or dict(kept)
        assert len(made) == len(merger.names) and kept.keys() == made.keys()
        assert all(kept[n] is made[n] for n in made)
    merger.set(MergeSpec("linear", 0.5))  # another method: the index goes (host memory)
    assert "ties" not in merger._indexes


# ---------------------------------------------------------------- straight into the parameter


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_into_equals_apply_rounded_to_the_destination(dtype):
    from spectrum.methods import Parents, get_method, resolve_params

    generator = torch.Generator().manual_seed(4)
    n = (1 << 18) + 4099  # more than one block
    base = torch.randn(n, generator=generator)
    direct = base + 0.1 * torch.randn(n, generator=generator)
    thinking = base + 0.1 * torch.randn(n, generator=generator)
    thinking[:100] = base[:100] - (direct[:100] - base[:100])  # opposite task vectors
    cases = [
        ("ties", {"tie_break": "zero"}, (0.0, 0.3, 0.5, 1.0)),
        ("ties", {"tie_break": "plus", "density": 0.4}, (0.5, 0.9)),
        ("topk_replace", {}, (0.0, 0.2, 1.0)),
        ("topk_diff_avg", {"scope": "per_tensor"}, (0.6,)),
        ("avg_topk_override", {}, (0.35,)),
    ]
    for name, given, lams in cases:
        method = get_method(name)
        params = resolve_params(method, given)
        parents = Parents("w", direct, thinking, base if method.needs_base else None)
        prepared = method.prepare(parents, params, 0)
        stats = None
        if method.global_stats is not None:
            stats = method.global_stats(lambda p=prepared: iter([("w", p)]), lams, params)
        for lam in lams:
            into = torch.full((n,), float("nan"), dtype=dtype)
            method.apply_into(prepared, lam, params, stats, into)
            expected = method.apply(prepared, lam, params, stats).to(dtype)
            assert torch.equal(bits(into), bits(expected)), (name, lam, dtype)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit patterns (NaN and −0 compare as themselves)."""
    return tensor.view(torch.int32 if tensor.element_size() == 4 else torch.int16)


def test_a_merge_written_in_place_that_overflows_puts_the_direct_parent_back():
    from transformers import AutoModelForCausalLM

    from spectrum.errors import UserError
    from spectrum.live.prepared import ParentTensors
    from spectrum.live.views import checkpoint_views
    from spectrum.toy.tiny import tiny_config

    config = tiny_config(vocab_size=64)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    views = checkpoint_views(model)
    generator = torch.Generator().manual_seed(1)
    base = {name: view.detach().clone() for name, view in views.items()}
    direct = {
        name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in base.items()
    }
    thinking = {
        name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in base.items()
    }
    name = next(iter(base))
    base[name].view(-1)[0], direct[name].view(-1)[0] = -3e38, 3e38  # τ_D = +inf: finite parents
    with torch.no_grad():
        for key, view in views.items():
            view.copy_(direct[key])
    merger = LiveMerger(model, None, ParentTensors(direct, thinking, base, config.to_dict()))
    assert merger._in_place(name) is not None  # the in-place path is the one taken
    with pytest.raises(UserError, match=rf"not finite: merged tensor {name} holds 1 NaN or Inf"):
        merger.set(MergeSpec("ties", 0.5, params={"density": 1.0}))
    assert merger.current.spec == MergeSpec("linear", 0.0).checked()
    for key, view in checkpoint_views(model).items():
        assert torch.equal(view, direct[key]), key


def test_the_disk_policy_keeps_no_index(tiny_moe_pair):
    """``disk`` is for parents the host cannot hold: no index joins them there."""
    pair = tiny_moe_pair
    disk = LiveMerger.load(pair["direct"], pair["thinking"], pair["base"], policy="disk")
    specs = [MergeSpec("topk_replace", k) for k in (0.3, 0.8, 0.55)]
    specs += [MergeSpec("ties", 0.5, params={"density": d}) for d in (0.5, 0.6, 0.7)]
    for spec in specs:
        disk.set(spec)
        assert disk.memory.policy == "disk" and disk.index_bytes == 0, spec
