"""The engine: in-memory math and scope, streaming global statistics, the output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spectrum.cli import main
from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints, merge_tensors
from spectrum.merge.scope import MergeScope
from spectrum.methods import Parents, get_method, resolve_params
from spectrum.methods.common.base import CHUNK
from spectrum.toy.tiny import save_random_model, tiny_config
from spectrum.toy.tokenizer import build_char_tokenizer
from spectrum.weights.checkpoint import open_checkpoint
from spectrum.weights.output import ShardWriter, plan_shards

LAYERS = 4


def _random_model(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for layer in range(LAYERS):
        names += [
            f"model.layers.{layer}.self_attn.q_proj.weight",
            f"model.layers.{layer}.mlp.up_proj.weight",
            f"model.layers.{layer}.input_layernorm.weight",
        ]
    return {
        name: torch.randn(6, 5 if "norm" not in name else 1, generator=generator).to(dtype)
        for name in names
    }


def _read_folder(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_in_memory_matches_the_formula_and_keeps_dtype(dtype):
    direct, thinking = _random_model(1, dtype), _random_model(2, dtype)
    merged = merge_tensors(direct, thinking, method="linear", lam=0.3)
    for name, tensor in merged.items():
        expected = 0.7 * direct[name].double() + 0.3 * thinking[name].double()
        assert tensor.dtype == dtype
        tolerance = 1e-6 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(
            tensor.double(), expected.to(dtype).double(), rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic"])
def test_elementwise_methods_merged_in_slices_equal_the_whole_tensor_merge(method):
    """The engine streams elementwise methods in CHUNK slices; the bytes must not change."""
    generator = torch.Generator().manual_seed(3)
    shape = (5, CHUNK // 2 + 7)  # 2.5 slices with a ragged tail
    roles = ("direct", "thinking", "base")
    base = torch.randn(shape, generator=generator).to(torch.bfloat16)
    tensors = {"base": base}
    for role in roles[:2]:
        noise = 0.01 * torch.randn(shape, generator=generator)
        tensors[role] = (base.float() + noise).to(torch.bfloat16)
    dicts = {role: {"model.layers.0.mlp.up_proj.weight": tensors[role]} for role in roles}
    merged = merge_tensors(*(dicts[role] for role in roles), method=method, lam=0.6)
    chosen = get_method(method)
    whole = Parents("w", *(tensors[role].float() for role in roles))
    params = resolve_params(chosen, {})
    expected = chosen.apply(chosen.prepare(whole, params, 0), 0.6, params, None)
    got = merged["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(got.view(torch.int16), expected.to(torch.bfloat16).view(torch.int16))
    if method == "slerp":  # it really slerped: not the linear fallback
        assert float(chosen.prepare(whole, params, 0)["omega"]) > 0


def test_outside_scope_keeps_direct_bytes_and_schedule_sets_each_layer():
    direct, thinking = _random_model(1, torch.bfloat16), _random_model(2, torch.bfloat16)
    scope = MergeScope(layers="1-3", modules=("attn", "mlp"), lam_schedule=(0.0, 0.9))
    merged = merge_tensors(direct, thinking, method="linear", lam=0.5, **scope.describe())
    for name, tensor in merged.items():
        layer = int(name.split(".")[2]) if ".layers." in name else None
        if layer is None or layer == 0 or "norm" in name:
            assert tensor.dtype == direct[name].dtype and torch.equal(tensor, direct[name])
            continue
        strength = 0.9 * layer / (LAYERS - 1)  # schedule 0 → 0.9 over layers 0..3
        expected = (1 - strength) * direct[name].double() + strength * thinking[name].double()
        torch.testing.assert_close(
            tensor.double(), expected.to(torch.bfloat16).double(), rtol=1e-2, atol=1e-2
        )


def test_global_topk_statistics_pass_over_the_scope_equals_an_exact_sort():
    direct, thinking = _random_model(3), _random_model(4)
    scope = MergeScope(modules=("attn", "mlp"))
    k = 0.25
    merged = merge_tensors(direct, thinking, method="topk_replace", lam=k, **scope.describe())
    in_scope = [n for n in direct if ("q_proj" in n or "up_proj" in n)]
    magnitudes = torch.cat([(thinking[n] - direct[n]).abs().flatten() for n in in_scope])
    count = round(k * magnitudes.numel())
    threshold = magnitudes.sort(descending=True).values[count - 1]
    for name, tensor in merged.items():
        if name not in in_scope:
            assert torch.equal(tensor, direct[name])
            continue
        top = (thinking[name] - direct[name]).abs() >= threshold
        assert torch.equal(tensor, torch.where(top, thinking[name], direct[name]))


def test_folder_layout_record_and_card(tiny_pair, tmp_path):
    out = tmp_path / "merged"
    config = MergeConfig(
        direct=str(tiny_pair["direct"]), thinking=str(tiny_pair["thinking"]),
        base=str(tiny_pair["base"]), spec=MergeSpec("dare", 0.6, seed=7), copy_from="direct",
        max_shard_size="30KB", device="cpu",
    )  # fmt: skip
    merge_checkpoints(config, out, progress=False)

    shards = sorted(out.glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) >= 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    for shard in shards:
        with safe_open(shard, framework="pt") as handle:
            sizes = [handle.get_tensor(n).nbytes for n in handle.keys()]
            assert handle.metadata() == {"format": "pt"}
        assert sum(sizes) <= 30_000 or len(sizes) == 1
    assert sorted(_read_folder(out)) == sorted(open_checkpoint(tiny_pair["direct"]).names())
    for name in ("config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_pair["direct"] / name).read_bytes()

    record = json.loads((out / "merge_config.json").read_text())
    assert record["method"] == "dare" and record["lam"] == 0.6 and record["seed"] == 7
    assert record["params"] == {"drop_rate": 0.2}  # the default, filled in
    for role in ("direct", "thinking", "base"):
        digest = open_checkpoint(tiny_pair[role]).content_hash()
        assert record["parents"][role]["content_hash"] == f"sha256:{digest}"
    card = (out / "README.md").read_text()
    assert "dare" in card and "λ = 0.6" in card and "drop_rate=0.2" in card

    # The record reproduces the merge: same config and seed → the same bytes.
    again = tmp_path / "again"
    assert (
        main(["merge", "--config", str(out / "merge_config.json"), "--out", str(again), "--quiet"])
        == 0
    )
    for shard in shards:
        assert (again / shard.name).read_bytes() == shard.read_bytes()


def test_config_file_with_cli_override(tiny_pair, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "direct": str(tiny_pair["direct"]), "thinking": str(tiny_pair["thinking"]),
        "method": "linear", "lam": 0.2, "modules": "attn,mlp", "layers": "1-2",
    }))  # fmt: skip
    out = tmp_path / "merged"
    assert (
        main(["merge", "--config", str(config), "--lam", "0.9", "--out", str(out), "--quiet"]) == 0
    )
    record = json.loads((out / "merge_config.json").read_text())
    assert record["lam"] == 0.9
    assert record["scope"] == {"layers": "1-2", "modules": ["attn", "mlp"], "lam_schedule": None}
    direct, merged = _read_folder(tiny_pair["direct"]), _read_folder(out)
    assert torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], direct["model.layers.0.mlp.up_proj.weight"]
    )
    assert not torch.equal(
        merged["model.layers.1.mlp.up_proj.weight"], direct["model.layers.1.mlp.up_proj.weight"]
    )


def test_force_replaces_the_folder_and_stale_staging_is_cleaned(tiny_pair, tmp_path):
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(tiny_pair["direct"]), "--thinking", str(tiny_pair["thinking"])]
    assert main([*args, "--lam", "0.2", "--out", str(out), "--quiet"]) == 0  # a previous merge
    # A staging folder left by a killed run (dead pid) and one of a live process.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f".merged.tmp-{dead.pid}", tmp_path / f".merged.tmp-{os.getppid()}"
    stale.mkdir()
    live.mkdir()
    assert main([*args, "--lam", "0.5", "--out", str(out), "--quiet"]) == 2
    assert json.loads((out / "merge_config.json").read_text())["lam"] == 0.2
    assert main([*args, "--lam", "0.5", "--out", str(out), "--quiet", "--force"]) == 0
    assert json.loads((out / "merge_config.json").read_text())["lam"] == 0.5
    assert not stale.exists() and live.exists()
    shutil.rmtree(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_tied_embeddings_merge_once_and_stay_tied(tmp_path):
    config = tiny_config("qwen3", vocab_size=len(build_char_tokenizer()), tie_word_embeddings=True)
    direct = save_random_model(tmp_path / "direct", config, 1)
    thinking = save_random_model(tmp_path / "thinking", config, 2, like=direct)
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(direct), "--thinking", str(thinking), "--lam", "0.5"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    assert "lm_head.weight" not in _read_folder(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    parents = [_read_folder(p)["model.embed_tokens.weight"].double() for p in (direct, thinking)]
    expected = (0.5 * parents[0] + 0.5 * parents[1]).float()
    torch.testing.assert_close(model.lm_head.weight.detach(), expected, rtol=1e-6, atol=1e-6)


def test_a_write_error_in_the_writer_thread_reaches_the_merge(tmp_path):
    # One shard, so close() writes no index: the only failure is the thread's own open.
    shards = plan_shards([("a", (4,), torch.float32), ("b", (4,), torch.float32)], 1 << 20)
    missing = tmp_path / "gone"
    writer = ShardWriter(missing, shards)
    writer.add("a", torch.zeros(4))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        writer.add("b", torch.zeros(4))
        writer.close()
    writer.abort()  # idempotent after a failure: returns, does not hang
