"""Differential test against mergekit (a dev dependency) on the same tiny Qwen3 pair.

`linear`: mergekit accumulates (1−λ)·θ_D and λ·θ_T with a fused multiply-add, spectrum
uses one torch.lerp, so the two agree to float32 rounding (not bit for bit), and exactly at
λ = 0. `slerp`: mergekit's t is our λ with the direct model as its base; both slerp the
flattened tensor, but mergekit falls back to linear interpolation already at
|cos Ω| > 0.9995 (ours at 1 − 1e-6), so only tensors below that are compared as slerp.
"""

from __future__ import annotations

import pytest
import torch
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
from safetensors.torch import load_file

from spectrum.merge import merge_tensors

MERGEKIT_LINEAR_THRESHOLD = 0.9995


def _read_folder(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _mergekit(pair, method: str, lam: float, out) -> dict[str, torch.Tensor]:
    direct, thinking = str(pair["direct"]), str(pair["thinking"])
    if method == "linear":
        models = [
            {"model": direct, "parameters": {"weight": 1 - lam}},
            {"model": thinking, "parameters": {"weight": lam}},
        ]
        config = {"merge_method": "linear", "models": models, "dtype": "float32"}
    else:
        models = [{"model": direct}, {"model": thinking}]
        config = {"merge_method": "slerp", "base_model": direct, "models": models}
        config |= {"parameters": {"t": lam}, "dtype": "float32"}
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    run_merge(MergeConfiguration.model_validate(config), str(out), options=options)
    return _read_folder(out)


@pytest.fixture(scope="module")
def parents(tiny_pair):
    return {role: _read_folder(path) for role, path in tiny_pair.items()}


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7])
def test_linear_agrees_with_mergekit(tiny_pair, parents, lam, tmp_path):
    theirs = _mergekit(tiny_pair, "linear", lam, tmp_path / "mk")
    ours = merge_tensors(parents["direct"], parents["thinking"], method="linear", lam=lam)
    assert sorted(theirs) == sorted(ours)
    for name, tensor in ours.items():
        if lam == 0.0:
            assert torch.equal(tensor, theirs[name]), name
        else:  # one float32 rounding apart at most
            torch.testing.assert_close(tensor, theirs[name], rtol=2.5e-7, atol=1e-7)


@pytest.mark.parametrize("lam", [0.25, 0.7])
def test_slerp_agrees_with_mergekit_where_both_slerp(tiny_pair, parents, lam, tmp_path):
    theirs = _mergekit(tiny_pair, "slerp", lam, tmp_path / "mk")
    ours = merge_tensors(parents["direct"], parents["thinking"], method="slerp", lam=lam)
    compared = 0
    for name, tensor in ours.items():
        direct, thinking = parents["direct"][name].double(), parents["thinking"][name].double()
        cos = (direct.flatten() @ thinking.flatten()) / (direct.norm() * thinking.norm())
        if abs(cos) > MERGEKIT_LINEAR_THRESHOLD:
            continue
        compared += 1
        scale = tensor.abs().max()
        torch.testing.assert_close(tensor / scale, theirs[name] / scale, rtol=0, atol=1e-6)
    assert compared >= 0.9 * len(ours)
