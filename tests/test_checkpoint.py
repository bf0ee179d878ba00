"""Checkpoints: layouts, lazy reads against safetensors' own reader, corruption, pickle, hub."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spectrum.errors import UserError
from spectrum.weights.checkpoint import open_checkpoint
from spectrum.weights.filehash import file_sha256


def _reference_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def _single_file_model(folder: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", **config}))
    return folder


def test_sharded_checkpoint_reads_every_tensor_like_safetensors(tiny_pair):
    checkpoint = open_checkpoint(tiny_pair["direct"])
    reference = _reference_tensors(tiny_pair["direct"])
    assert len(list(tiny_pair["direct"].glob("*.safetensors"))) >= 2
    assert sorted(checkpoint.names()) == sorted(reference)
    assert checkpoint.config["model_type"] == "qwen3"
    for name, tensor in reference.items():
        assert checkpoint.shape(name) == tuple(tensor.shape)
        assert checkpoint.dtype(name) == tensor.dtype
        assert torch.equal(checkpoint.get(name), tensor)


def test_single_file_mixed_dtypes_and_empty_tensor(tmp_path):
    tensors = {
        "a": torch.randn(3, 5, dtype=torch.bfloat16),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4, dtype=torch.float16),
        "empty": torch.zeros(0, 3),
    }
    checkpoint = open_checkpoint(_single_file_model(tmp_path / "m", tensors))
    for name, tensor in tensors.items():
        read = checkpoint.get(name)
        assert read.dtype == tensor.dtype and torch.equal(read, tensor)


def test_tied_head_copy_is_dropped_so_both_layouts_compare_equal(tmp_path):
    embed = torch.randn(10, 4)
    tensors = {"model.embed_tokens.weight": embed, "lm_head.weight": embed.clone()}
    tied = open_checkpoint(_single_file_model(tmp_path / "t", tensors, tie_word_embeddings=True))
    untied = open_checkpoint(_single_file_model(tmp_path / "u", tensors, tie_word_embeddings=False))
    assert tied.names() == ["model.embed_tokens.weight"]
    assert sorted(untied.names()) == ["lm_head.weight", "model.embed_tokens.weight"]


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_is_a_user_error_naming_the_file(tiny_pair, tmp_path, damage):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_pair["direct"], folder)
    shard = sorted(folder.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100] if damage == "truncate" else data[:8] + b"\xff" * (len(data) - 8))
    with pytest.raises(UserError, match=shard.name):
        open_checkpoint(folder)


def test_pickle_refused_unless_allowed(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    weights = {"w": torch.randn(2, 3)}
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"model_type": "qwen3"}')
    with pytest.raises(UserError) as refused:
        open_checkpoint(folder)
    assert "--allow-pickle" in refused.value.for_cli() and "--" not in str(refused.value)
    checkpoint = open_checkpoint(folder, allow_pickle=True)
    assert checkpoint.names() == ["w"] and torch.equal(checkpoint.get("w"), weights["w"])


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        open_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        open_checkpoint(tmp_path / "empty")


def test_content_hash_is_sha256_of_files_and_changes_with_one_weight(tiny_pair, tmp_path):
    checkpoint = open_checkpoint(tiny_pair["direct"])
    files = [tiny_pair["direct"] / f for f in sorted({*json.loads(
        (tiny_pair["direct"] / "model.safetensors.index.json").read_text()
    )["weight_map"].values()})] + [tiny_pair["direct"] / "config.json"]  # fmt: skip
    expected = hashlib.sha256()
    for file in files:
        expected.update(f"{file.name}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode())
    assert checkpoint.content_hash() == expected.hexdigest()

    copy = tmp_path / "copy"
    shutil.copytree(tiny_pair["direct"], copy)
    assert open_checkpoint(copy).content_hash() == checkpoint.content_hash()
    shard = sorted(copy.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    shard.write_bytes(bytes(data))
    assert open_checkpoint(copy).content_hash() != checkpoint.content_hash()


def test_remembered_hashes_are_used_only_while_the_file_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    os.utime(weights, (time.time() - 60, time.time() - 60))  # older than the racy window
    assert file_sha256(weights) == hashlib.sha256(b"a" * 1000).hexdigest()
    cache = tmp_path / "cache" / "sha256.json"
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == [hashlib.sha256(b"a" * 1000).hexdigest()]
    # A planted digest proves the lookup is used while size, times and inode are unchanged.
    cache.write_text(json.dumps(dict.fromkeys(stored, "0" * 64)))
    assert file_sha256(weights) == "0" * 64
    # Same size, mtime put back: the ctime still moves, so the file is hashed again.
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(weights) == hashlib.sha256(b"b" * 1000).hexdigest()
    # A file changed just now is hashed but not remembered: it may change again unseen.
    fresh = tmp_path / "fresh.safetensors"
    fresh.write_bytes(b"c")
    assert file_sha256(fresh) == hashlib.sha256(b"c").hexdigest()
    assert all(not key.startswith(str(fresh.resolve())) for key in json.loads(cache.read_text()))


def test_a_damaged_hash_cache_is_ignored_and_off_disables_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sha256.json").write_text("{not json")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    os.utime(weights, (time.time() - 60, time.time() - 60))
    assert file_sha256(weights) == hashlib.sha256(b"x").hexdigest()
    monkeypatch.setenv("SPECTRUM_CACHE", "off")
    (tmp_path / "cache" / "sha256.json").unlink()
    assert file_sha256(weights) == hashlib.sha256(b"x").hexdigest()
    assert not (tmp_path / "cache" / "sha256.json").exists()


def test_hub_id_offline_is_one_clear_line_quickly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "spectrum", "merge", "--direct", "Qwen/Qwen3-4B-Instruct-2507",
         "--thinking", "Qwen/Qwen3-4B-Thinking-2507", "--lam", "0.5", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - start < 60
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Qwen/Qwen3-4B-Instruct-2507" in lines[0] and "local path" in lines[0]
    assert not (tmp_path / "o").exists()
