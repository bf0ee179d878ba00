"""Check that two (or three) checkpoints can be merged, before anything is written.

Configs are compared as transformers builds them: each goes through its config class, so
defaults are filled and old and new field forms (``rope_theta`` / ``rope_parameters``)
agree. Hard errors: configs that differ in a field defining the architecture
(``ARCH_FIELDS``, all differences listed), a config its own weights contradict (layer or
expert count), different tensor names or shapes, a different vocabulary (size, or the
token at an ordinary id), a non-finite parent tensor (``check_finite``, called as tensors
stream through). Warnings: special tokens renamed at the same ids (R1-Distill tokenizers
rename Qwen's), and a different chat template, naming the parent whose template is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig

from spectrum.errors import UserError
from spectrum.weights.checkpoint import Checkpoint

SHOWN = 5  # mismatches listed in one error line
# Config fields that decide the shapes or the computation: parents differing in any of
# them are different models, whatever their tensors look like.
ARCH_FIELDS = (
    "model_type", "architectures", "tie_word_embeddings", "num_hidden_layers",
    "hidden_size", "intermediate_size", "moe_intermediate_size",
    "shared_expert_intermediate_size", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "num_experts", "num_local_experts", "n_routed_experts",
    "n_shared_experts", "num_experts_per_tok", "decoder_sparse_step", "mlp_only_layers",
    "hidden_act", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
    "sliding_window", "use_sliding_window", "layer_types", "attention_bias", "norm_topk_prob",
)  # fmt: skip
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_VOCAB_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")


def validate_parents(
    direct: Checkpoint,
    thinking: Checkpoint,
    base: Checkpoint | None = None,
    *,
    template_from: str = "direct",
) -> list[str]:
    """Raise UserError naming the first mismatches; return warnings worth printing.

    ``template_from``: the parent whose tokenizer files (and chat template) are used.
    """
    warnings: list[str] = []
    _check_config_against_weights(direct)
    others = [("thinking", thinking)] + ([("base", base)] if base is not None else [])
    for role, other in others:
        _check_architecture(direct, other, role)
        _check_tensors(direct, other, role)
        warnings += _check_vocabulary(direct, other, role)
    if _chat_template(direct.path) != _chat_template(thinking.path):
        warnings.append(
            "the direct and thinking parents have different chat templates; "
            f"the {template_from} parent's is used"
        )
    return warnings


def built_config(checkpoint: Checkpoint) -> dict:
    """The config as transformers builds it (defaults filled, field forms normalised);
    the raw config.json for a model type this transformers does not know."""
    try:
        return AutoConfig.from_pretrained(checkpoint.path).to_dict()
    except (ValueError, KeyError, OSError):
        raw = dict(checkpoint.config)
        if "rope_theta" in raw and raw.get("rope_parameters") is None:  # the older form
            raw["rope_parameters"] = {"rope_type": "default", "rope_theta": raw.pop("rope_theta")}
        return raw


def _check_architecture(direct: Checkpoint, other: Checkpoint, role: str) -> None:
    mine, theirs = built_config(direct), built_config(other)
    differ = [
        f"{key} {mine.get(key)!r} vs {theirs.get(key)!r}"
        for key in ARCH_FIELDS
        if mine.get(key) != theirs.get(key)
    ]
    if differ:
        raise UserError(
            f"the configs of direct {direct.source} and {role} {other.source} differ in "
            f"architecture fields: {'; '.join(differ)}"
        )


def _check_config_against_weights(checkpoint: Checkpoint) -> None:
    """The config must describe the weights (the other parents are compared to this one)."""
    names = checkpoint.names()
    found = {
        "num_hidden_layers": _count(_LAYER, names),
        **dict.fromkeys(_EXPERT_COUNT_KEYS, _count(_EXPERT, names)),
    }
    for key, counted in found.items():
        declared = checkpoint.config.get(key)
        if declared is None or counted is None:
            continue
        if isinstance(declared, int) and declared != counted:
            raise UserError(
                f"{checkpoint.source}: config.json declares {key} = {declared} but the "
                f"weights hold {counted}"
            )


def _count(pattern: re.Pattern, names: list[str]) -> int | None:
    """Distinct indices the pattern finds in the names, or None when it finds none."""
    indices = {int(match.group(1)) for name in names if (match := pattern.search(name))}
    return max(indices) + 1 if indices else None


def check_finite(
    tensor: torch.Tensor, name: str, role: str, whole: Callable[[], torch.Tensor] | None = None
) -> None:
    """Raise naming ``name`` when ``tensor`` (a parent's tensor or piece) holds NaN or Inf.

    ``whole`` returns the full tensor when ``tensor`` is one piece of it: on failure the
    count covers the whole tensor, read once more only then.
    """
    if not tensor.is_floating_point() or _sums_finite(tensor):
        return
    full = whole() if whole is not None else tensor
    count = int((~torch.isfinite(_widened(full))).sum())
    if not count:
        return
    raise UserError(
        f"{role} parent tensor {name} holds {count} non-finite values (NaN or Inf) "
        f"of {full.numel()}; a merge of it would be non-finite too"
    )


def check_merged_finite(tensor: torch.Tensor, name: str, merge: str) -> None:
    """Raise naming ``name`` when a merged tensor (or one piece of it) holds NaN or Inf.

    The parents were checked finite, so it is the merge ``merge`` (a label: method, λ)
    that overflows, e.g. ``task_arithmetic`` with a huge ``scale``; nothing may be written
    or served from it.
    """
    if not tensor.is_floating_point() or _sums_finite(tensor):
        return
    count = int((~torch.isfinite(_widened(tensor))).sum())
    if count:
        raise UserError(
            f"the merge {merge} is not finite: merged tensor {name} holds {count} NaN or Inf "
            f"values (of {tensor.numel()} checked) in {str(tensor.dtype).removeprefix('torch.')}; "
            "lower λ or the method's parameters"
        )


# Elements summed at once: a half-precision sum in float32 casts its input first, and a
# whole 151,936 × 2048 embedding cast is a 1.2 GB temporary; a part's is 16 MiB.
_SUM_ELEMENTS = 1 << 22


def _sums_finite(tensor: torch.Tensor) -> bool:
    """Whether the float32 sum of ``tensor`` is finite, summed part by part.

    A sum is finite only if every term is, and costs one fused pass without the boolean
    temporary of isfinite (a tenth of the time); an overflow of finite terms is a false
    alarm that the exact count clears.
    """
    if tensor.numel() <= _SUM_ELEMENTS or tensor.dim() == 0:
        return bool(_widened(tensor).sum(dtype=torch.float32).isfinite())
    if tensor.dim() > 1 and tensor.shape[0] == 1:
        return _sums_finite(tensor[0])
    rows = max(1, _SUM_ELEMENTS // (tensor.numel() // tensor.shape[0]))
    return all(_sums_finite(part) for part in tensor.split(rows))


def _widened(tensor: torch.Tensor) -> torch.Tensor:
    # float8 has no sum or isfinite kernels; its tensors are small enough to widen.
    return tensor.float() if tensor.element_size() == 1 else tensor


def _check_tensors(direct: Checkpoint, other: Checkpoint, role: str) -> None:
    mine, theirs = set(direct.names()), set(other.names())
    problems = [f"{name} missing from {role}" for name in sorted(mine - theirs)]
    problems += [f"{name} missing from direct" for name in sorted(theirs - mine)]
    problems += [
        f"{name} is {list(direct.shape(name))} in direct, {list(other.shape(name))} in {role}"
        for name in direct.names()
        if name in theirs and direct.shape(name) != other.shape(name)
    ]
    if problems:
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise UserError(
            f"direct and {role} do not match tensor for tensor: "
            + "; ".join(problems[:SHOWN])
            + more
        )


def _check_vocabulary(direct: Checkpoint, other: Checkpoint, role: str) -> list[str]:
    """Raise when the vocabularies differ; return a warning for renamed special tokens."""
    mine, theirs = _vocabulary(direct.path), _vocabulary(other.path)
    # A parent without tokenizer files (often a bare base model) cannot be compared.
    if mine is None or theirs is None or mine == theirs:
        return []
    if "ordinary" not in mine or "ordinary" not in theirs:
        raise UserError(f"direct and {role} have different tokenizer vocabularies "
                        "(their vocabulary files differ)")  # fmt: skip
    problems = _ordinary_differences(mine, theirs)
    if problems:
        raise UserError(
            f"direct and {role} have different tokenizer vocabularies ({'; '.join(problems)})"
        )
    renamed = [
        f"{index}: {mine['added'][index]!r} vs {theirs['added'][index]!r}"
        for index in sorted(mine["added"])
        if mine["added"][index] != theirs["added"][index]
    ]
    if not renamed:
        return []
    more = f" (and {len(renamed) - SHOWN} more)" if len(renamed) > SHOWN else ""
    return [f"direct and {role} name special tokens differently at the same ids: "
            f"{', '.join(renamed[:SHOWN])}{more}"]  # fmt: skip


def _ordinary_differences(mine: dict, theirs: dict) -> list[str]:
    """Why two vocabularies tokenize differently: size, ordinary tokens, merges, or an
    added token that is not special changing or existing in one only."""
    problems = []
    size = [len(vocab["ordinary"]) + len(vocab["added"]) for vocab in (mine, theirs)]
    if size[0] != size[1] or set(mine["added"]) != set(theirs["added"]):
        problems.append(f"{size[0]} vs {size[1]} tokens")
    moved = [i for i, token in mine["ordinary"].items() if theirs["ordinary"].get(i) != token]
    if moved:
        shown = ", ".join(f"{i}: {mine['ordinary'][i]!r} vs {theirs['ordinary'].get(i)!r}"
                          for i in moved[:SHOWN])  # fmt: skip
        problems.append(f"ordinary tokens differ at {len(moved)} ids, e.g. {shown}")
    if mine["merges"] != theirs["merges"]:
        problems.append("their merge rules differ")
    plain = [
        i for i in set(mine["added"]) & set(theirs["added"])
        if mine["added"][i] != theirs["added"][i]
        and not (i in mine["special"] and i in theirs["special"])
    ]  # fmt: skip
    if plain:
        problems.append(f"added tokens that are not special differ at ids {sorted(plain)[:SHOWN]}")
    return problems


def _vocabulary(path: Path) -> dict | None:
    """A tokenizer's vocabulary: id → token of its model's own tokens (``ordinary``) and of
    its added tokens (``added``, ``special`` the ids of special ones) and its merges, from
    tokenizer.json; else the raw bytes of its vocabulary files."""
    tokenizer_json = path / "tokenizer.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text())
        model = data.get("model") or {}
        vocab = model.get("vocab") or {}
        if isinstance(vocab, list):  # unigram models store [piece, score] pairs
            ordinary = {index: piece for index, (piece, _) in enumerate(vocab)}
        else:
            ordinary = {index: token for token, index in vocab.items()}
        added = data.get("added_tokens", [])
        for token in added:
            ordinary.pop(token["id"], None)  # an added token overrides its id
        return {
            "ordinary": ordinary,
            "added": {token["id"]: token["content"] for token in added},
            "special": {token["id"] for token in added if token.get("special")},
            "merges": model.get("merges"),
        }
    found = {name: (path / name).read_bytes() for name in _VOCAB_FILES if (path / name).is_file()}
    return found or None


def _chat_template(path: Path) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        if (path / name).is_file():
            return (path / name).read_text()
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return json.dumps(template, allow_nan=False) if template is not None else None
    return None
