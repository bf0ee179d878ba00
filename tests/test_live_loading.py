"""``load_model`` builds the same model as ``from_pretrained``, one tensor at a time."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from spectrum.live.loading import load_model
from spectrum.toy.tiny import save_random_model, tiny_config
from spectrum.toy.tokenizer import build_char_tokenizer

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "pair"
CPU = torch.device("cpu")


def assert_same_model(path: Path, dtype: torch.dtype | None = None) -> None:
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto").eval()
    ours = load_model(path, CPU, dtype)
    theirs_state, our_state = reference.state_dict(), ours.state_dict()
    assert theirs_state.keys() == our_state.keys()
    for name, tensor in theirs_state.items():
        assert our_state[name].dtype == tensor.dtype, name
        assert torch.equal(our_state[name], tensor), name
    buffers = dict(ours.named_buffers())
    for name, buffer in reference.named_buffers():
        assert torch.equal(buffers[name], buffer), name
    tied = [m.lm_head.weight is m.model.embed_tokens.weight for m in (reference, ours)]
    assert tied[0] == tied[1]
    assert ours.generation_config.to_dict() == reference.generation_config.to_dict()
    assert not ours.training
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **greedy), reference.generate(ids, **greedy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "arch, overrides",
    [("qwen3", {}), ("qwen3", {"tie_word_embeddings": True}), ("qwen3_moe", {})],
    ids=["qwen3", "qwen3-tied", "qwen3-moe"],
)
def test_same_as_from_pretrained(tmp_path, arch, overrides, dtype, caplog):
    config = tiny_config(arch, vocab_size=len(build_char_tokenizer()), **overrides)
    path = save_random_model(tmp_path / "model", config, seed=3, dtype=dtype)
    with caplog.at_level(logging.INFO, logger="spectrum.live.loading"):
        assert_same_model(path)
    assert "from_pretrained" not in caplog.text  # filled through the views, no fallback


def test_embedded_pair_and_explicit_dtype(caplog):
    with caplog.at_level(logging.INFO, logger="spectrum.live.loading"):
        assert_same_model(ASSETS / "thinking")
        assert load_model(ASSETS / "direct", CPU, torch.bfloat16).dtype == torch.bfloat16
        assert_same_model(ASSETS / "direct", torch.bfloat16)
    assert "from_pretrained" not in caplog.text


def test_falls_back_to_from_pretrained_when_views_do_not_cover(tmp_path, caplog):
    """A checkpoint missing a tensor: transformers initialises it (RMSNorm: ones); so do we."""
    config = tiny_config("qwen3", vocab_size=len(build_char_tokenizer()))
    path = save_random_model(tmp_path / "model", config, seed=4, max_shard_size="10MB")
    drop_tensor(path / "model.safetensors", "model.norm.weight")
    with caplog.at_level(logging.INFO, logger="spectrum.live.loading"):
        assert_same_model(path)
    assert "from_pretrained" in caplog.text


def drop_tensor(file: Path, name: str) -> None:
    """Rewrite a single-file safetensors checkpoint without ``name``."""
    data = file.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    header.pop(name)
    kept, pieces, offset = {}, [], 0
    for key, entry in header.items():
        if key == "__metadata__":
            kept[key] = entry
            continue
        start, stop = entry["data_offsets"]
        pieces.append(body[start:stop])
        kept[key] = {**entry, "data_offsets": [offset, offset + stop - start]}
        offset += stop - start
    encoded = json.dumps(kept).encode()
    file.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(pieces))
