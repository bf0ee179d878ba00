"""Where a merge applies: decoder layers, module kinds and per-layer λ schedules.

Module kinds, from Hugging Face tensor names (Qwen3 dense and MoE, Llama-like models):

* ``attn``: ``self_attn.{q,k,v,o}_proj`` (weights and biases);
* ``mlp``: everything under ``.mlp.`` — dense projections, every expert, the router
  (``mlp.gate``) and shared experts;
* ``norm``: every RMSNorm gain, *including* ``self_attn.q_norm``/``k_norm``: they are norm
  gains like the others (1-D, no mixing), so ``--modules attn`` means the projections;
* ``embed``: ``embed_tokens``; ``lm_head``: the output head (tied heads are the embedding).

``--layers`` selects decoder layers; tensors outside any layer (embeddings, final norm,
head) are outside a layer-restricted scope. Everything outside the scope keeps θ_D.

A λ schedule is a list of strengths spread evenly over depth and linearly interpolated in
between, as mergekit's gradient parameters are: layer i of L gets the schedule's value at
position i/(L−1). Tensors outside any layer take the plain λ (mergekit gives them the
schedule's first value; a separate λ for embeddings and head is more useful here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from spectrum.errors import UserError

MODULE_KINDS = ("attn", "mlp", "embed", "norm", "lm_head")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def module_of(name: str) -> str | None:
    """The module kind of a tensor name, or None when it is none of the known kinds."""
    parts = name.split(".")
    if "norm" in (parts[-2] if len(parts) > 1 else name):
        return "norm"
    if ".mlp." in name or ".block_sparse_moe." in name:
        return "mlp"
    if ".self_attn." in name or ".attn." in name:
        return "attn"
    if "embed_tokens" in name:
        return "embed"
    if name.startswith("lm_head."):
        return "lm_head"
    return None


@lru_cache(maxsize=64)
def parse_layers(spec: str) -> frozenset[int]:
    """``"12-35"`` or ``"0-3,8"`` → the set of layer indices."""
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UserError(
                f"bad layer range {part.strip()!r} in {spec!r}; write e.g. 12-35 or 0-3,8"
            )
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise UserError(f"bad layer range {part.strip()!r}: the end is before the start")
        layers.update(range(first, last + 1))
    return frozenset(layers)


@dataclass(frozen=True)
class MergeScope:
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    lam_schedule: tuple[float, ...] | None = None
    # (kind, λ) pairs: that kind's tensors merge at their own λ, the others at the plain λ.
    module_lams: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            parse_layers(self.layers)
        if self.modules is not None:
            unknown = [module for module in self.modules if module not in MODULE_KINDS]
            if unknown or not self.modules:
                raise UserError(
                    f"unknown module kind(s) {', '.join(unknown) or '(none given)'}; "
                    f"choose from {', '.join(MODULE_KINDS)}"
                )
        if self.lam_schedule is not None and len(self.lam_schedule) == 0:
            raise UserError("empty λ schedule; give at least one value, e.g. 0.5,0.9")
        if self.module_lams is not None:
            unknown = [kind for kind, _ in self.module_lams if kind not in MODULE_KINDS]
            if unknown or not self.module_lams:
                raise UserError(
                    f"λ for unknown module kind(s) {', '.join(unknown) or '(none given)'}; "
                    f"choose from {', '.join(MODULE_KINDS)}"
                )
            if self.lam_schedule is not None:
                # Depth and module kind would both set a tensor's λ: one rule at a time.
                raise UserError("give either a λ schedule over layers or λ per module kind")

    def check_layers(self, num_layers: int) -> None:
        """Refuse a layer selection that names layers the model does not have."""
        if self.layers is None:
            return
        beyond = sorted(layer for layer in parse_layers(self.layers) if layer >= num_layers)
        if beyond:
            raise UserError(
                f"layers {self.layers} names layer {beyond[0]}, but the model has "
                f"{num_layers} layers (0-{num_layers - 1})"
            )

    def strength_for(self, name: str, lam: float, num_layers: int) -> float | None:
        """The merge strength of one tensor, or None when it is outside the scope."""
        layer = layer_of(name)
        if self.layers is not None and (layer is None or layer not in parse_layers(self.layers)):
            return None
        kind = module_of(name)
        if self.modules is not None and kind not in self.modules:
            return None
        if self.module_lams is not None:
            return dict(self.module_lams).get(kind, lam)
        if self.lam_schedule is None or layer is None:
            return lam
        position = layer / (num_layers - 1) if num_layers > 1 else 1.0  # as mergekit
        anchors = np.linspace(0.0, 1.0, len(self.lam_schedule))
        return float(np.interp(position, anchors, self.lam_schedule))

    def describe(self) -> dict:
        described = {
            "layers": self.layers,
            "modules": list(self.modules) if self.modules is not None else None,
            "lam_schedule": list(self.lam_schedule) if self.lam_schedule is not None else None,
        }
        if self.module_lams is not None:  # only when used: older records keep their form
            described["module_lams"] = dict(self.module_lams)
        return described
