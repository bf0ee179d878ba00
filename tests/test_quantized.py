"""Quantized parents: block-scaled FP8 (DeepSeek-V3 layout) and MXFP4 (gpt-oss layout).

Tiny random DeepSeek-V3 and gpt-oss pairs are saved in bfloat16 by transformers, then
quantized here into the published layouts (the FP8 recipe of DeepSeek-V3's
``weight_block_size`` tiles, the OCP MX recipe for MXFP4). Each merge through the real CLI
is compared with the parents dequantized by transformers' own functions
(``Fp8Dequantize._dequantize_one``, ``convert_moe_packed_tensors``), then merged by a
float64 formula written here.
"""

from __future__ import annotations

import functools
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, DeepseekV3Config, GptOssConfig
from transformers.integrations.finegrained_fp8 import Fp8Dequantize
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

import spectrum.methods.common.base
from spectrum.cli import main
from spectrum.errors import UserError
from spectrum.live.disk import read_parents
from spectrum.live.loading import load_model
from spectrum.merge import merge_tensors
from spectrum.weights.checkpoint import open_checkpoint

BLOCK = 16  # FP8 tile: divides every tiny shape but the 40-row kv_a_proj_with_mqa
LAM = 0.3
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def _deepseek_config() -> DeepseekV3Config:
    return DeepseekV3Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
        first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
        qk_nope_head_dim=16, v_head_dim=16, n_group=1, topk_group=1,
        tie_word_embeddings=False, eos_token_id=2, pad_token_id=0, bos_token_id=None,
    )  # fmt: skip


def _gpt_oss_config() -> GptOssConfig:
    return GptOssConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=False, eos_token_id=2, pad_token_id=0, bos_token_id=None,
    )  # fmt: skip


def quantize_fp8(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's layout: per ``block`` × ``block`` tile (the last ones partial),
    ``weight_scale_inv = amax / 448`` and ``weight / weight_scale_inv`` in float8_e4m3fn."""
    rows, cols = weight.shape
    tiles = (math.ceil(rows / block), math.ceil(cols / block))
    quantized = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    scale_inv = torch.empty(tiles, dtype=torch.float32)
    for i in range(tiles[0]):
        for j in range(tiles[1]):
            tile = (slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
            amax = float(weight[tile].float().abs().max())
            scale_inv[i, j] = amax / FP8_MAX if amax > 0 else 1.0
            scaled = weight[tile].float() / scale_inv[i, j]
            quantized[tile] = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return quantized, scale_inv


def deepseek_dequantize(quantized: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's ``weight_dequant``: each tile times its scale (last tiles partial)."""
    out = torch.empty(quantized.shape, dtype=torch.float32)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            tile = (slice(i * BLOCK, (i + 1) * BLOCK), slice(j * BLOCK, (j + 1) * BLOCK))
            out[tile] = quantized[tile].float() * scale_inv[i, j]
    return out


def quantize_mxfp4(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MX (E2M1 elements, E8M0 scale per 32) of an ``(experts, in, out)`` parameter,
    stored as gpt-oss does: ``(experts, out, in / 32, 16)`` bytes, low nibble first."""
    stored = param.float().transpose(1, 2)  # (experts, out, in)
    groups = stored.reshape(*stored.shape[:2], -1, 32)
    amax = groups.abs().amax(-1).clamp(min=2.0**-100)
    exponent = torch.floor(torch.log2(amax)) - 2  # E2M1's largest exponent is 2
    scaled = groups / torch.exp2(exponent).unsqueeze(-1)
    magnitudes = torch.tensor(FP4_VALUES[:8])
    nearest = (scaled.abs().unsqueeze(-1) - magnitudes).abs().argmin(-1)
    nibbles = nearest + 8 * (scaled < 0)
    packed = (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)
    return packed, (exponent + 127).to(torch.uint8)


def _read(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _quantize_folder(folder, quantize, quantization_config: dict) -> dict[str, torch.Tensor]:
    """Rewrite ``folder``'s weights as one quantized model.safetensors; return what it holds."""
    stored: dict[str, torch.Tensor] = {}
    for name, tensor in _read(folder).items():
        stored.update(quantize(name, tensor))
    for old in [*folder.glob("*.safetensors"), *folder.glob("*.index.json")]:
        old.unlink()
    save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config))
    return stored


def _fp8_tensor(name: str, tensor: torch.Tensor, block: int = BLOCK) -> dict[str, torch.Tensor]:
    if "_proj" not in name or tensor.dim() != 2:  # embeddings, norms, router, head: bf16
        return {name: tensor}
    quantized, scale_inv = quantize_fp8(tensor, block)
    return {name: quantized, name.removesuffix(".weight") + ".weight_scale_inv": scale_inv}


def _mxfp4_tensor(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        return {name: tensor}
    blocks, scales = quantize_mxfp4(tensor)
    return {f"{name}_blocks": blocks, f"{name}_scales": scales}


FP8_CONFIG = {
    "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
    "weight_block_size": [BLOCK, BLOCK],
}  # fmt: skip
MXFP4_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": ["router", "self_attn"]}
LAYOUTS = {
    "fp8": (_deepseek_config, _fp8_tensor, FP8_CONFIG),
    "mxfp4": (_gpt_oss_config, _mxfp4_tensor, MXFP4_CONFIG),
    # 8-row tiles divide every tiny shape: transformers' from_pretrained loads this one.
    "fp8_divisible": (
        _deepseek_config, functools.partial(_fp8_tensor, block=8),
        {**FP8_CONFIG, "weight_block_size": [8, 8]},
    ),
}  # fmt: skip


def _save(folder, config, seed, like=None):
    torch.manual_seed(seed)
    if like is None:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(like, dtype=torch.float32)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * param.abs().mean() * torch.randn_like(param))
    model.to(torch.bfloat16).save_pretrained(folder)
    return folder


def _make_pair(layout: str, tmp_path_factory) -> dict:
    """A quantized direct/thinking pair: paths, stored and original (bf16) tensors, and
    their bf16 base (the same architecture, unquantized)."""
    make_config, quantize, quantization_config = LAYOUTS[layout]
    root = tmp_path_factory.mktemp(layout)
    base = _save(root / "base", make_config(), 0)
    paths = {role: _save(root / role, None, seed, like=base) for role, seed in
             (("direct", 1), ("thinking", 2))}  # fmt: skip
    original = {role: _read(path) for role, path in paths.items()}
    stored = {role: _quantize_folder(p, quantize, quantization_config) for role, p in paths.items()}
    return dict(layout=layout, paths=paths, stored=stored, original=original, base=base)


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory):
    return _make_pair("fp8", tmp_path_factory)


@pytest.fixture(scope="module")
def mxfp4_pair(tmp_path_factory):
    return _make_pair("mxfp4", tmp_path_factory)


@pytest.fixture(scope="module")
def fp8_divisible_pair(tmp_path_factory):
    return _make_pair("fp8_divisible", tmp_path_factory)


@pytest.fixture(params=["fp8", "mxfp4"])
def pair(request):
    return request.getfixturevalue(f"{request.param}_pair")


def transformers_dequantized(stored: dict[str, torch.Tensor]) -> dict:
    """The float32 tensors transformers' own functions make of ``stored``, by model name,
    and the names whose FP8 tiles transformers refuses (read by DeepSeek's formula)."""
    out, by_deepseek = {}, set()
    for name, tensor in stored.items():
        if name.endswith(("weight_scale_inv", "_scales")):
            continue
        if name.endswith("_blocks"):
            stem = name.removesuffix("_blocks")
            scales = stored[f"{stem}_scales"]
            out[stem] = convert_moe_packed_tensors(tensor, scales, dtype=torch.float32)
            continue
        scale = stored.get(name.removesuffix(".weight") + ".weight_scale_inv")
        if scale is None:
            out[name] = tensor.float()
            continue
        try:
            out[name] = Fp8Dequantize(None)._dequantize_one(tensor, scale, torch.float32)
        except ValueError:  # "not divisible by scale grid": 40 rows in 16-row tiles
            out[name] = deepseek_dequantize(tensor, scale)
            by_deepseek.add(name)
    return {"tensors": out, "by_deepseek": by_deepseek}


def _merge_cli(pair, method: str, out) -> None:
    paths = pair["paths"]
    args = ["merge", "--direct", str(paths["direct"]), "--thinking", str(paths["thinking"])]
    args += ["--method", method, "--lam", str(LAM), "--seed", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0


def test_checkpoint_shows_the_dequantized_model_names_shapes_and_values(pair):
    direct = open_checkpoint(pair["paths"]["direct"])
    plain = open_checkpoint(pair["base"])  # the same architecture saved in bf16
    assert direct.quantization == pair["layout"]
    assert sorted(direct.names()) == sorted(plain.names())
    assert all(direct.shape(n) == plain.shape(n) for n in plain.names())
    assert all(direct.dtype(n) == torch.bfloat16 for n in direct.names())
    reference = transformers_dequantized(pair["stored"]["direct"])
    for name, expected in reference["tensors"].items():
        assert torch.equal(direct.get(name), expected), name
        flat, n = expected.reshape(-1), expected.numel()
        spans = ((0, 1), (n // 5, min(n, n // 2 + 3)), (n // 3, max(n // 3, n - 3)))
        for start, stop in spans:  # rows cut anywhere
            assert torch.equal(direct.get_slice(name, start, stop), flat[start:stop]), name
    # The stored layout is a faithful quantization of the bf16 weights it was made from.
    close = 0.999 if pair["layout"] == "fp8" else 0.97  # 3-bit vs 1-bit mantissas
    stored = pair["stored"]["direct"]
    quantized = [name for name in reference["tensors"] if stored.get(name) is None
                 or stored[name].dtype == torch.float8_e4m3fn]  # fmt: skip
    assert len(quantized) >= 4
    for name in quantized:
        original = pair["original"]["direct"][name].float().reshape(-1)
        dequantized = reference["tensors"][name].reshape(-1)
        assert torch.cosine_similarity(dequantized, original, dim=0) > close, name
    if pair["layout"] == "fp8":  # one tile shape transformers refuses, read by DeepSeek's rule
        assert reference["by_deepseek"] == {
            f"model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight" for i in range(2)
        }


@pytest.mark.parametrize("chunk", [None, 999])
def test_linear_merge_equals_dequantize_then_float64_merge(pair, tmp_path, chunk, monkeypatch):
    if chunk is not None:  # slices that cut rows, tiles and experts anywhere
        monkeypatch.setattr(spectrum.methods.common.base, "CHUNK", chunk)
    out = tmp_path / "merged"
    _merge_cli(pair, "linear", out)
    written = _read(out)
    dequantized = {
        role: transformers_dequantized(pair["stored"][role])["tensors"]
        for role in ("direct", "thinking")
    }
    assert sorted(written) == sorted(dequantized["direct"])
    exact = total = 0
    for name, tensor in written.items():
        direct, thinking = (dequantized[r][name].double() for r in ("direct", "thinking"))
        expected = ((1 - LAM) * direct + LAM * thinking).to(torch.bfloat16)
        assert tensor.dtype == torch.bfloat16, name
        # float32 then bf16 against float64 then bf16: at most one bf16 step apart.
        torch.testing.assert_close(tensor.float(), expected.float(), rtol=2**-7, atol=1e-6)
        exact += int((tensor == expected).sum())
        total += tensor.numel()
    assert exact / total > 0.99


def test_quantized_direct_with_a_plain_bf16_thinking(pair, tmp_path):
    """One quantized parent, one plain (the bf16 base plays the thinking model)."""
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(pair["paths"]["direct"]), "--thinking", str(pair["base"])]
    assert main([*args, "--lam", str(LAM), "--out", str(out), "--quiet"]) == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    direct = transformers_dequantized(pair["stored"]["direct"])["tensors"]
    plain = _read(pair["base"])
    written = _read(out)
    assert sorted(written) == sorted(plain)
    for name, tensor in written.items():
        expected = (1 - LAM) * direct[name].double() + LAM * plain[name].double()
        torch.testing.assert_close(tensor, expected.to(torch.bfloat16), rtol=2**-7, atol=1e-6)


def test_fp8_scales_merged_apart_would_be_wrong(fp8_pair):
    """What the merge did before: weight and weight_scale_inv interpolated separately."""
    pair = fp8_pair
    name = "model.layers.0.mlp.down_proj.weight"
    scale = name.removesuffix(".weight") + ".weight_scale_inv"
    stored = {r: pair["stored"][r] for r in ("direct", "thinking")}
    apart = [
        ((1 - LAM) * stored["direct"][k].float() + LAM * stored["thinking"][k].float())
        for k in (name, scale)
    ]
    naive = Fp8Dequantize(None)._dequantize_one(apart[0].to(torch.float8_e4m3fn), apart[1],
                                                torch.float32)  # fmt: skip
    dequantized = [
        transformers_dequantized(stored[r])["tensors"][name].double()
        for r in ("direct", "thinking")
    ]
    right = (1 - LAM) * dequantized[0] + LAM * dequantized[1]
    assert float((naive.double() - right).abs().max() / right.abs().max()) > 0.02


def test_topk_replace_equals_the_in_memory_merge_of_transformers_dequantized(pair, tmp_path):
    """A whole-tensor method with global statistics reads the same float32 values."""
    out = tmp_path / "merged"
    _merge_cli(pair, "topk_replace", out)
    dequantized = [
        transformers_dequantized(pair["stored"][r])["tensors"] for r in ("direct", "thinking")
    ]
    expected = merge_tensors(*dequantized, method="topk_replace", lam=LAM, seed=3)
    written = _read(out)
    assert sorted(written) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor.to(torch.bfloat16)), name


def test_merged_folder_is_plain_bf16_and_loads_with_transformers(pair, tmp_path):
    out = tmp_path / "merged"
    _merge_cli(pair, "linear", out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
    written = _read(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    shared = [name for name in written if name in state]  # DeepSeek fuses its experts
    assert len(shared) > len(written) // 2
    for name in shared:
        assert torch.equal(state[name], written[name]), name
    with torch.no_grad():
        logits = model(torch.tensor([[3, 5, 7, 11]])).logits
    assert logits.shape == (1, 4, 128) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("layout", ["fp8_divisible", "mxfp4"])
def test_lam_zero_equals_transformers_loading_the_quantized_parent(layout, request, tmp_path):
    """transformers' own from_pretrained of the quantized direct parent (it dequantizes to
    bf16 on a CPU) holds what the merge writes at λ = 0."""
    pair = request.getfixturevalue(f"{layout}_pair")
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(pair["paths"]["direct"]), "--thinking"]
    args += [str(pair["paths"]["thinking"]), "--lam", "0", "--out", str(out), "--quiet"]
    assert main(args) == 0
    loaded = AutoModelForCausalLM.from_pretrained(pair["paths"]["direct"]).state_dict()
    written = _read(out)
    shared = [name for name in written if name in loaded]  # DeepSeek fuses its experts
    assert len(shared) > len(written) // 2
    for name in shared:
        assert torch.equal(written[name], loaded[name]), name


@pytest.mark.parametrize("method", ["gptq", "awq", "bitsandbytes"])
def test_other_quantization_is_refused_by_name_before_any_work(fp8_pair, tmp_path, method, capsys):
    pair = fp8_pair
    bad = tmp_path / "bad"
    shutil.copytree(pair["paths"]["thinking"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (bad / "config.json").write_text(json.dumps(config))
    # Garbage weights: refused by the config alone, the file is never read.
    (bad / "model.safetensors").write_bytes(b"\0garbage")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    args = ["merge", "--direct", str(pair["paths"]["direct"]), "--thinking", str(bad)]
    assert main([*args, "--out", str(outputs / "merged"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"quant_method {method!r} is not supported" in lines[0]
    assert list(outputs.iterdir()) == []


def test_live_merger_and_loader_refuse_quantized_parents_by_name(pair):
    paths = pair["paths"]
    with pytest.raises(UserError, match=f"{pair['layout']}-quantized and the live merger"):
        read_parents(paths["direct"], paths["thinking"], policy="resident")
    with pytest.raises(UserError, match=f"{pair['layout']}-quantized and the live model loader"):
        load_model(paths["direct"], torch.device("cpu"))
