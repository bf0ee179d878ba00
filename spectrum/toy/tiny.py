"""Tiny random checkpoints of any transformers decoder family, in the real on-disk format.

Tests and benchmarks use these instead of hub weights (nothing can be downloaded here).
A "pair" is a base model plus a direct and a thinking child that differ from it by
small seeded perturbations, like a real instruct/thinking pair fine-tuned from one base.

``tiny_config`` shrinks any config class transformers ships: it sets each small-shape
field the class declares (hidden size, layers, heads, experts, latent ranks...) and
leaves everything else at the class's defaults, so no family needs code of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from spectrum.toy.tokenizer import build_char_tokenizer

# Families the tests build (the model_type transformers registers for each); any other
# decoder model_type works as well.
ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text", "phi3",
    "olmo", "olmo2", "granite", "deepseek_v3", "mixtral", "gpt_oss", "glm4",
)  # fmt: skip
_COMMON = dict(
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
# Set only where the config class has the field: experts, routing, latent attention.
_WHERE_DECLARED = dict(
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=2,
    topk_group=1,
    q_lora_rank=32,
    kv_lora_rank=16,
    qk_rope_head_dim=16,  # the rotary head: head_dim (16) in DeepSeek-V3
    qk_nope_head_dim=16,
    v_head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=8,
)


def _fields(config_class: type) -> set[str]:
    if dataclasses.is_dataclass(config_class):
        return {field.name for field in dataclasses.fields(config_class)}
    return set(inspect.signature(config_class.__init__).parameters)


def tiny_config(arch: str = "qwen3", vocab_size: int = 128, **overrides) -> PretrainedConfig:
    """A small config of ``arch`` (a transformers ``model_type``): hidden 64, 4 layers."""
    if arch not in CONFIG_MAPPING:
        raise ValueError(f"transformers has no model type {arch!r}")
    config_class = CONFIG_MAPPING[arch]
    declared = _fields(config_class)
    extra = {key: value for key, value in _WHERE_DECLARED.items() if key in declared}
    if "kv_lora_rank" in declared:  # latent attention expands keys to every head
        extra["num_key_value_heads"] = _COMMON["num_attention_heads"]
    return config_class(**{**_COMMON, **extra, "vocab_size": vocab_size, **overrides})


def _scale(tensor: torch.Tensor) -> float:
    # A tensor initialised to zeros (Gemma's (1 + w) norms, DeepSeek's correction bias)
    # still gets noise: children that agree on it would test nothing.
    return float(tensor.abs().mean()) or 1.0


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
    """Save a seeded random model; with ``like``, the weights of ``like`` plus seeded noise
    on every floating checkpoint tensor (parameters and persistent buffers)."""
    torch.manual_seed(seed)
    if like is None:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(like, dtype=torch.float32)
        state = model.state_dict()
        buffers = [b for name, b in model.named_buffers() if name in state]
        with torch.no_grad():
            for tensor in [*model.parameters(), *buffers]:
                if tensor.is_floating_point():
                    tensor.add_(noise * _scale(tensor) * torch.randn_like(tensor))
    model = model.to(dtype)
    out = Path(out)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    build_char_tokenizer().save_pretrained(out)
    return out


def save_tiny_pair(
    root: str | Path, arch: str = "qwen3", seed: int = 0, *, config_overrides=None, **save_kwargs
) -> dict[str, Path]:
    """Write ``root/{base,direct,thinking}`` and return their paths."""
    root = Path(root)
    config = tiny_config(arch, vocab_size=len(build_char_tokenizer()), **(config_overrides or {}))
    base = save_random_model(root / "base", config, seed, **save_kwargs)
    return {
        "base": base,
        "direct": save_random_model(root / "direct", config, seed + 1, like=base, **save_kwargs),
        "thinking": save_random_model(
            root / "thinking", config, seed + 2, like=base, **save_kwargs
        ),
    }
