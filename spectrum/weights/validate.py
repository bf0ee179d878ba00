"""Check that two (or three) checkpoints can be merged, before anything is written.

Hard errors: a different ``model_type``/architecture/tied-embedding setting, different
tensor names or shapes, a different tokenizer vocabulary. A different chat template is only
a warning: the merged model takes the template of the parent its files are copied from.
"""

from __future__ import annotations

import json
from pathlib import Path

from spectrum.errors import UserError
from spectrum.weights.checkpoint import Checkpoint

SHOWN = 5  # mismatches listed in one error line
_VOCAB_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")


def validate_parents(
    direct: Checkpoint, thinking: Checkpoint, base: Checkpoint | None = None
) -> list[str]:
    """Raise UserError naming the first mismatches; return warnings worth printing."""
    warnings: list[str] = []
    others = [("thinking", thinking)] + ([("base", base)] if base is not None else [])
    for role, other in others:
        _check_architecture(direct, other, role)
        _check_tensors(direct, other, role)
        _check_vocabulary(direct, other, role)
    if _chat_template(direct.path) != _chat_template(thinking.path):
        warnings.append(
            "the direct and thinking parents have different chat templates; "
            "the merged model gets the one of the parent its files are copied from"
        )
    return warnings


def _check_architecture(direct: Checkpoint, other: Checkpoint, role: str) -> None:
    for key in ("model_type", "architectures", "tie_word_embeddings"):
        mine, theirs = direct.config.get(key), other.config.get(key)
        if mine != theirs:
            raise UserError(
                f"different {key}: direct {direct.source} has {mine!r}, "
                f"{role} {other.source} has {theirs!r}"
            )


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


def _check_vocabulary(direct: Checkpoint, other: Checkpoint, role: str) -> None:
    mine, theirs = _vocabulary(direct.path), _vocabulary(other.path)
    # A parent without tokenizer files (often a bare base model) cannot be compared.
    if mine is None or theirs is None or mine == theirs:
        return
    if mine.get("tokens") is not None and theirs.get("tokens") is not None:
        differ = sorted(set(mine["tokens"]) ^ set(theirs["tokens"]))[:SHOWN]
        ids = [t for t in mine["tokens"] if mine["tokens"][t] != theirs["tokens"].get(t, ...)]
        detail = f"tokens in one only: {differ}" if differ else f"ids differ for {ids[:SHOWN]}"
    else:
        detail = "their vocabulary files differ"
    raise UserError(f"direct and {role} have different tokenizer vocabularies ({detail})")


def _vocabulary(path: Path) -> dict | None:
    """Token → id (tokenizer.json, with added tokens) plus the raw bytes of vocab files."""
    found: dict = {}
    tokenizer_json = path / "tokenizer.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text())
        vocab = (data.get("model") or {}).get("vocab") or {}
        if isinstance(vocab, list):  # unigram models store [piece, score] pairs
            tokens = {piece: index for index, (piece, _) in enumerate(vocab)}
        else:
            tokens = dict(vocab)
        tokens.update({added["content"]: added["id"] for added in data.get("added_tokens", [])})
        found["tokens"] = tokens
    for name in _VOCAB_FILES:
        if (path / name).is_file():
            found[name] = (path / name).read_bytes()
    return found or None


def _chat_template(path: Path) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        if (path / name).is_file():
            return (path / name).read_text()
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return json.dumps(template) if template is not None else None
    return None
