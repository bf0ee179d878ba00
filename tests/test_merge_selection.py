"""Scope: module kinds of Qwen3 dense/MoE names, layer ranges, λ schedules over depth."""

from __future__ import annotations

import pytest

from spectrum.errors import UserError
from spectrum.merge.scope import MergeScope, layer_of, module_of, parse_layers

KINDS = {
    "model.embed_tokens.weight": "embed",
    "lm_head.weight": "lm_head",
    "model.norm.weight": "norm",
    "model.layers.3.input_layernorm.weight": "norm",
    "model.layers.3.post_attention_layernorm.weight": "norm",
    "model.layers.3.self_attn.q_norm.weight": "norm",
    "model.layers.3.self_attn.k_norm.weight": "norm",
    "model.layers.3.self_attn.q_proj.weight": "attn",
    "model.layers.3.self_attn.k_proj.weight": "attn",
    "model.layers.3.self_attn.v_proj.weight": "attn",
    "model.layers.3.self_attn.o_proj.weight": "attn",
    "model.layers.3.mlp.gate_proj.weight": "mlp",
    "model.layers.3.mlp.up_proj.weight": "mlp",
    "model.layers.3.mlp.down_proj.weight": "mlp",
    "model.layers.3.mlp.gate.weight": "mlp",  # MoE router
    "model.layers.3.mlp.experts.7.down_proj.weight": "mlp",
    "model.layers.3.mlp.experts.gate_up_proj": "mlp",  # transformers 5 fused experts
}


@pytest.mark.parametrize(("name", "kind"), KINDS.items())
def test_module_kinds_of_qwen3_dense_and_moe_names(name, kind):
    assert module_of(name) == kind


def test_every_tiny_tensor_has_a_kind(tiny_pair, tiny_moe_pair):
    from spectrum.weights.checkpoint import open_checkpoint

    for pair in (tiny_pair, tiny_moe_pair):
        names = open_checkpoint(pair["direct"]).names()
        assert all(module_of(name) is not None for name in names)
        assert {layer_of(name) for name in names} == {None, 0, 1, 2, 3}


def test_layer_ranges():
    assert parse_layers("12-15") == {12, 13, 14, 15}
    assert parse_layers("0-3,8") == {0, 1, 2, 3, 8}
    assert parse_layers("5") == {5}
    for bad in ("3-1", "a-b", "1-", ""):
        with pytest.raises(UserError, match="layer range"):
            parse_layers(bad)
    with pytest.raises(UserError, match="has 4 layers"):
        MergeScope(layers="2-9").check_layers(4)


def test_unknown_module_kind_is_refused():
    with pytest.raises(UserError, match="ffn"):
        MergeScope(modules=("attn", "ffn"))


def test_strength_for_layers_modules_and_schedule():
    scope = MergeScope(layers="1-3", modules=("attn", "mlp"))
    assert scope.strength_for("model.layers.0.mlp.up_proj.weight", 0.7, 4) is None
    assert scope.strength_for("model.layers.1.mlp.up_proj.weight", 0.7, 4) == 0.7
    assert scope.strength_for("model.layers.1.input_layernorm.weight", 0.7, 4) is None
    assert scope.strength_for("model.embed_tokens.weight", 0.7, 4) is None

    # Three anchors over 5 layers (positions 0, .25, .5, .75, 1): 0 → 1 → 0.5, piecewise linear.
    schedule = MergeScope(lam_schedule=(0.0, 1.0, 0.5))
    expected = [0.0, 0.5, 1.0, 0.75, 0.5]
    for layer, value in enumerate(expected):
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        assert schedule.strength_for(name, 0.3, 5) == pytest.approx(value)
    assert schedule.strength_for("model.embed_tokens.weight", 0.3, 5) == 0.3
