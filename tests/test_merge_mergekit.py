"""Differential test against mergekit (a dev dependency) on the same tiny Qwen3 pair.

`linear`: both round the weights to float32, accumulate (1−λ)·θ_D and λ·θ_T from zero
with fused multiply-adds and divide by the weights' float32 sum, so they agree bit for bit,
in float32 and in bf16, at every λ. `slerp`: mergekit's t is our λ with the direct model
as its base; both slerp the flattened tensor, but mergekit falls back to linear
interpolation already at |cos Ω| > 0.9995 (ours at 1 − 1e-6), so only tensors below that
are compared as slerp.
"""

from __future__ import annotations

import pytest
import torch
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
from safetensors.torch import load_file

from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints, merge_tensors
from spectrum.methods.common.base import CHUNK
from spectrum.toy.tiny import save_random_model, tiny_config

MERGEKIT_LINEAR_THRESHOLD = 0.9995


def _read_folder(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _mergekit(pair, method: str, lam: float, out, dtype="float32") -> dict[str, torch.Tensor]:
    direct, thinking = str(pair["direct"]), str(pair["thinking"])
    if method == "linear":
        models = [
            {"model": direct, "parameters": {"weight": 1 - lam}},
            {"model": thinking, "parameters": {"weight": lam}},
        ]
        config = {"merge_method": "linear", "models": models, "dtype": dtype}
    else:
        models = [{"model": direct}, {"model": thinking}]
        config = {"merge_method": "slerp", "base_model": direct, "models": models}
        config |= {"parameters": {"t": lam}, "dtype": "float32"}
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    run_merge(MergeConfiguration.model_validate(config), str(out), options=options)
    return _read_folder(out)


@pytest.fixture(scope="module")
def bf16_folders(tmp_path_factory):
    """A bf16 pair whose embeddings and head (8,200 × 64) span several engine slices."""
    config = tiny_config("qwen3", vocab_size=8200, num_hidden_layers=2)
    assert config.vocab_size * config.hidden_size > 2 * CHUNK
    root = tmp_path_factory.mktemp("bf16_pair")
    direct = save_random_model(root / "direct", config, 1, dtype=torch.bfloat16)
    thinking = save_random_model(root / "thinking", config, 2, dtype=torch.bfloat16)
    return {"direct": direct, "thinking": thinking}


@pytest.fixture(scope="module")
def parents(tiny_pair):
    return {role: _read_folder(path) for role, path in tiny_pair.items()}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int16 if tensor.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 0.55, 1.0])
def test_linear_is_bit_exact_with_mergekit(tiny_pair, parents, lam, tmp_path):
    theirs = _mergekit(tiny_pair, "linear", lam, tmp_path / "mk")
    ours = merge_tensors(parents["direct"], parents["thinking"], method="linear", lam=lam)
    assert sorted(theirs) == sorted(ours)
    for name, tensor in ours.items():
        assert torch.equal(_bits(tensor), _bits(theirs[name])), name


@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_bf16_linear_file_merge_is_bit_exact_with_mergekit(bf16_folders, lam, tmp_path):
    theirs = _mergekit(bf16_folders, "linear", lam, tmp_path / "mk", dtype="bfloat16")
    out = tmp_path / "ours"
    config = MergeConfig(direct=str(bf16_folders["direct"]), thinking=str(bf16_folders["thinking"]),
                         spec=MergeSpec("linear", lam), device="cpu")  # fmt: skip
    ours = _read_folder(merge_checkpoints(config, out, progress=False))
    assert sorted(theirs) == sorted(ours)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(_bits(tensor), _bits(theirs[name])), name


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
