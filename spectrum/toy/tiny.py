"""Tiny random Qwen3 / Qwen3-MoE checkpoints in the real on-disk format.

Tests and benchmarks use these instead of hub weights (nothing can be downloaded here).
A "pair" is a base model plus a direct and a thinking child that differ from it by
small seeded perturbations, like a real instruct/thinking pair fine-tuned from one base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, Qwen3Config, Qwen3MoeConfig

from spectrum.toy.tokenizer import build_char_tokenizer

ARCHITECTURES = ("qwen3", "qwen3_moe")


def tiny_config(arch: str = "qwen3", vocab_size: int = 128, **overrides) -> PretrainedConfig:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "qwen3":
        return Qwen3Config(**{**common, **overrides})
    if arch == "qwen3_moe":
        moe = dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
        return Qwen3MoeConfig(**{**common, **moe, **overrides})
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")


def save_random_model(
    out: str | Path,
    config: PretrainedConfig,
    seed: int,
    *,
    like: str | Path | None = None,
    noise: float = 0.05,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int = "50KB",
) -> Path:
    """Save a seeded random model; with ``like``, the weights of ``like`` plus seeded noise."""
    torch.manual_seed(seed)
    if like is None:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(like, dtype=torch.float32)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(noise * param.abs().mean() * torch.randn_like(param))
    model = model.to(dtype)
    out = Path(out)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    build_char_tokenizer().save_pretrained(out)
    return out


def save_tiny_pair(
    root: str | Path, arch: str = "qwen3", seed: int = 0, **save_kwargs
) -> dict[str, Path]:
    """Write ``root/{base,direct,thinking}`` and return their paths."""
    root = Path(root)
    config = tiny_config(arch, vocab_size=len(build_char_tokenizer()))
    base = save_random_model(root / "base", config, seed, **save_kwargs)
    return {
        "base": base,
        "direct": save_random_model(root / "direct", config, seed + 1, like=base, **save_kwargs),
        "thinking": save_random_model(
            root / "thinking", config, seed + 2, like=base, **save_kwargs
        ),
    }
