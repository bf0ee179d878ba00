"""Real Qwen3 configurations and their checkpoint tensor shapes, written out by hand.

Nothing here comes from the Hugging Face hub (no network in CI): the ``config.json``
fields below are those the hub repositories publish, so the planner, its tests and the
real-scale rehearsal use real shapes without downloading weights. ``checkpoint_shapes``
lists the tensors a hub checkpoint of such a config holds (per-expert names for MoE, no
``lm_head`` when embeddings are tied), in the hub's own names.

``write_header_checkpoint`` writes a checkpoint folder whose safetensors files have real
headers and *sparse* data (``os.truncate``): the right sizes, no disk used, no weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

_QWEN3_COMMON = dict(
    architectures=["Qwen3ForCausalLM"],
    attention_bias=False,
    attention_dropout=0.0,
    bos_token_id=151643,
    eos_token_id=151645,
    head_dim=128,
    hidden_act="silu",
    initializer_range=0.02,
    max_position_embeddings=40960,
    model_type="qwen3",
    rms_norm_eps=1e-06,
    rope_scaling=None,
    rope_theta=1000000,
    sliding_window=None,
    torch_dtype="bfloat16",
    use_cache=True,
    use_sliding_window=False,
    vocab_size=151936,
)

# config.json of Qwen/Qwen3-0.6B (hub, 2025-04).
QWEN3_0_6B = dict(
    _QWEN3_COMMON,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    max_window_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    tie_word_embeddings=True,
)
# config.json of Qwen/Qwen3-1.7B.
QWEN3_1_7B = dict(QWEN3_0_6B, hidden_size=2048, intermediate_size=6144, num_attention_heads=16)
# config.json of Qwen/Qwen3-4B; the -2507 Instruct/Thinking pair has the same shapes with a
# 262,144-token context (rope_theta 5e6).
QWEN3_4B = dict(
    QWEN3_0_6B,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    max_window_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
)
QWEN3_4B_2507 = dict(QWEN3_4B, max_position_embeddings=262144, rope_theta=5000000)
# config.json of Qwen/Qwen3-30B-A3B (and the -2507 pair: same shapes).
QWEN3_30B_A3B = dict(
    _QWEN3_COMMON,
    architectures=["Qwen3MoeForCausalLM"],
    model_type="qwen3_moe",
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_experts=128,
    num_experts_per_tok=8,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    norm_topk_prob=True,
    output_router_logits=False,
    router_aux_loss_coef=0.001,
    num_hidden_layers=48,
    max_window_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
# The hub checkpoints of Qwen3-0.6B and -1.7B store ``lm_head.weight`` although it is tied
# (0.75 B and 2.03 B stored parameters); Qwen3-4B's does not (total_size 8,044,936,192).
STORES_TIED_HEAD = {"qwen3-0.6b", "qwen3-1.7b"}
REAL_CONFIGS = {
    "qwen3-0.6b": QWEN3_0_6B,
    "qwen3-1.7b": QWEN3_1_7B,
    "qwen3-4b": QWEN3_4B,
    "qwen3-4b-2507": QWEN3_4B_2507,
    "qwen3-30b-a3b": QWEN3_30B_A3B,
}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_SAFETENSORS_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def checkpoint_shapes(config: dict, tied_head: bool = False) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor name → shape for a Qwen3 / Qwen3-MoE ``config`` (hub layout).

    ``tied_head``: store ``lm_head.weight`` even when tied, as some hub checkpoints do.
    """
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    vocab = config["vocab_size"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shapes.update({
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
            f"{prefix}.self_attn.q_proj.weight": (q_out, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv_out, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv_out, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, q_out),
            f"{prefix}.self_attn.q_norm.weight": (head_dim,),
            f"{prefix}.self_attn.k_norm.weight": (head_dim,),
        })  # fmt: skip
        shapes.update(_mlp_shapes(config, layer, f"{prefix}.mlp"))
    shapes["model.norm.weight"] = (hidden,)
    if tied_head or not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _mlp_shapes(config: dict, layer: int, prefix: str) -> dict[str, tuple[int, ...]]:
    hidden = config["hidden_size"]
    # transformers 5 saves "num_local_experts"; the hub configs say "num_experts".
    experts = config.get("num_experts") or config.get("num_local_experts") or 0
    sparse = (
        experts > 0
        and layer not in config.get("mlp_only_layers", [])
        and (layer + 1) % config.get("decoder_sparse_step", 1) == 0
    )
    if not sparse:
        inner = config["intermediate_size"]
        return {
            f"{prefix}.gate_proj.weight": (inner, hidden),
            f"{prefix}.up_proj.weight": (inner, hidden),
            f"{prefix}.down_proj.weight": (hidden, inner),
        }
    inner = config["moe_intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.gate.weight": (experts, hidden)}
    for expert in range(experts):
        shapes[f"{prefix}.experts.{expert}.gate_proj.weight"] = (inner, hidden)
        shapes[f"{prefix}.experts.{expert}.up_proj.weight"] = (inner, hidden)
        shapes[f"{prefix}.experts.{expert}.down_proj.weight"] = (hidden, inner)
    return shapes


def dtype_bytes(config: dict) -> int:
    return _DTYPE_BYTES[config.get("torch_dtype") or config.get("dtype") or "bfloat16"]


def checkpoint_bytes(config: dict, tied_head: bool = False) -> int:
    """Bytes of tensor data in a checkpoint of ``config`` (headers not counted)."""
    shapes = checkpoint_shapes(config, tied_head).values()
    return sum(math.prod(shape) * dtype_bytes(config) for shape in shapes)


def write_header_checkpoint(
    folder: str | Path,
    config: dict,
    shard_bytes: int = 5 * 10**9,
    fill: bytes | None = None,
    tied_head: bool = False,
) -> Path:
    """A checkpoint folder with real headers and sparse (all-zero, no disk) tensor data.

    ``fill`` (a few bytes) is written at the start of each shard's data, e.g. garbage
    that would make any weight read visible.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    size = _DTYPE_BYTES[dtype]
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    used = 0
    for name, shape in checkpoint_shapes(config, tied_head).items():
        nbytes = math.prod(shape) * size
        if shards[-1] and used + nbytes > shard_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = shape
        used += nbytes
    weight_map = {}
    for index, shard in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_sparse_shard(folder / file, shard, _SAFETENSORS_DTYPE[dtype], size, fill)
        weight_map.update(dict.fromkeys(shard, file))
    index_json = {
        "metadata": {"total_size": checkpoint_bytes(config, tied_head)},
        "weight_map": weight_map,
    }
    # Keys sorted, as save_pretrained writes them (the reader walks shards by offset).
    index_text = json.dumps(index_json, indent=2, sort_keys=True)
    (folder / "model.safetensors.index.json").write_text(index_text)
    return folder


def _write_sparse_shard(
    path: Path, shard: dict[str, tuple[int, ...]], dtype: str, size: int, fill: bytes | None
) -> None:
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shard.items():
        nbytes = math.prod(shape) * size
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads its header to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        if fill:
            handle.write(fill)
    os.truncate(path, 8 + len(blob) + offset)
