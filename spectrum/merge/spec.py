"""``MergeSpec``: the one record of *which* merge — method, λ (or a λ schedule), resolved
parameters, scope and seed — shared by the CLI, merge files, the live merger, the dashboard
and sweeps.

It says nothing about *where* (parents, device, output folder): those belong to the job
that runs it. A spec is frozen and hashable, and ``to_json``/``from_json`` round-trip it
exactly, so "is this the merge I asked for" is ``==`` in one process or across several.
``checked()`` is the single validation of a spec against a pair of models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from spectrum.errors import UserError
from spectrum.merge.scope import MODULE_KINDS, MergeScope
from spectrum.methods import MergeMethod, get_method, resolve_params

EXTRAPOLATION_HINT = "pass --allow-extrapolation to extrapolate"
# A merge's seed is stored in INTEGER columns (samples.merge_seed, votes.seed): one that
# does not fit would fail only after the generation it labels.
SEED_MAX = 2**31 - 1


def check_lam(lam: float, *, allow_extrapolation: bool = False) -> float:
    """The one λ rule: a finite number, within [0, 1] unless extrapolation is allowed."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise UserError(f"λ must be a number, not {lam!r}") from None
    if not math.isfinite(value):
        raise UserError(f"λ={value} is not a finite number")
    if not allow_extrapolation and not 0.0 <= value <= 1.0:
        raise UserError(
            f"λ={value:g} is outside [0, 1] (0 = direct, 1 = thinking)",
            cli_hint=EXTRAPOLATION_HINT,
        )
    return value


def _module_lams(value: Any) -> tuple[tuple[str, float], ...] | None:
    """``{"attn": 0.8}``, ``"attn=0.8,mlp=0.5"`` or pairs → sorted (kind, λ) pairs."""
    if value is None:
        return None
    shown = value
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise UserError(
                f"λ per module kind {value!r}: write KIND=λ pairs, e.g. attn=0.8,mlp=0.5"
            )
        value = [(kind, lam) for kind, _, lam in pairs]
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple(sorted((str(kind).strip(), float(lam)) for kind, lam in items))
    except (TypeError, ValueError):
        raise UserError(f"λ per module kind {value!r}: each λ must be a number") from None
    kinds = [kind for kind, _ in pairs]
    twice = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    if twice:
        raise UserError(f"λ per module kind {shown!r} names {twice[0]!r} twice: give it one λ")
    return pairs


def parse_lam_text(text: str) -> tuple[float | None, tuple[tuple[str, float], ...] | None]:
    """``"0.7"`` → (0.7, None); ``"0.5,attn=0.8,mlp=0.3"`` → (0.5, (("attn", 0.8), ...)).

    The bare number is λ for every module kind not named; it may be left out only when
    every kind is named (then the plain λ is unused and set to the first kind's).
    """
    parts = [part.strip() for part in text.split(",") if part.strip()]
    bare = [part for part in parts if "=" not in part]
    named = _module_lams(",".join(part for part in parts if "=" in part) or None)
    if len(bare) > 1 or (not bare and not named):
        raise UserError(f"λ {text!r}: one number, optionally with KIND=λ pairs (0.5,attn=0.8)")
    try:
        lam = float(bare[0]) if bare else None
    except ValueError:
        raise UserError(f"λ {bare[0]!r} is not a number") from None
    if lam is None and named is not None:
        missing = [kind for kind in MODULE_KINDS if kind not in dict(named)]
        if missing:
            raise UserError(
                f"λ {text!r} names no λ for {', '.join(missing)}: add a bare number for the "
                "kinds not named, e.g. 0.5,attn=0.8,mlp=0.3"
            )
        lam = named[0][1]
    return lam, named


def _frozen_tuple(value: Any, kind: type) -> tuple | None:
    """``"a,b"``, a list or a tuple → a tuple of ``kind`` (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, str | list | tuple):
        raise UserError(f"cannot read {value!r} as a list of {kind.__name__}")
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(kind(item.strip() if isinstance(item, str) else item) for item in items)
    except (TypeError, ValueError):
        raise UserError(f"cannot read {value!r} as a list of {kind.__name__}") from None


@dataclass(frozen=True)
class MergeSpec:
    """Which merge: ``MergeSpec("slerp", 0.7)``, ``MergeSpec("ties", 0.5, {"density": 0.8},
    layers="12-35", modules=("mlp",), seed=0)``.

    ``params`` is kept as sorted ``(name, value)`` pairs so the spec hashes; ``dict(spec.params)``
    gives the mapping. Parameters are resolved (defaults filled, values typed) by ``checked``.
    """

    method: str = "linear"
    lam: float = 0.5
    params: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    lam_schedule: tuple[float, ...] | None = None
    seed: int = 0
    # λ per module kind, e.g. (("attn", 0.8), ("mlp", 0.5)); kinds not named take ``lam``.
    module_lams: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise UserError(f"method must be a name, not {self.method!r}")
        given = self.params.items() if isinstance(self.params, Mapping) else self.params
        try:
            params = tuple(sorted((str(k), v) for k, v in given))
            lam, seed = float(self.lam), int(self.seed)
            if isinstance(self.seed, bool) or (isinstance(self.seed, float) and seed != self.seed):
                raise ValueError  # True or 1.5 is no seed
        except (TypeError, ValueError):
            raise UserError(
                f"a merge needs a numeric λ, an integer seed and NAME=VALUE parameters "
                f"(got λ={self.lam!r}, seed={self.seed!r}, params={self.params!r})"
            ) from None
        if not 0 <= seed <= SEED_MAX:
            raise UserError(f"a merge seed must be between 0 and {SEED_MAX}, not {seed}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "layers", None if self.layers is None else str(self.layers))
        object.__setattr__(self, "modules", _frozen_tuple(self.modules, str))
        object.__setattr__(self, "lam_schedule", _frozen_tuple(self.lam_schedule, float))
        object.__setattr__(self, "module_lams", _module_lams(self.module_lams))
        _ = self.scope  # a malformed layer range or module kind fails at construction

    @property
    def scope(self) -> MergeScope:
        return MergeScope(self.layers, self.modules, self.lam_schedule, self.module_lams)

    @property
    def merge_method(self) -> MergeMethod:
        return get_method(self.method)

    def lams(self) -> tuple[float, ...]:
        """Every strength the spec names: λ, the schedule's values, the module kinds' λs."""
        return (self.lam, *(self.lam_schedule or ()), *(lam for _, lam in self.module_lams or ()))

    def with_lam(self, lam: float) -> MergeSpec:
        return replace(self, lam=lam)

    def checked(
        self,
        *,
        has_base: bool | None = None,
        num_layers: int | None = None,
        allow_extrapolation: bool = False,
    ) -> MergeSpec:
        """This spec validated and with its parameters resolved, or a ``UserError``.

        ``has_base`` and ``num_layers`` describe the models it will run on; None skips
        the checks that need them (e.g. before the parents are opened).
        """
        method = self.merge_method
        if has_base is False and method.needs_base:
            raise UserError(f"method {method.name} needs a base model", cli_hint="pass --base PATH")
        for lam in self.lams():
            check_lam(lam, allow_extrapolation=allow_extrapolation)
        if num_layers is not None:
            self.scope.check_layers(num_layers)
        return replace(self, params=resolve_params(method, dict(self.params)))

    def label(self) -> str:
        """``linear · λ 0.60`` (+ scope when restricted): how a merged answer is labelled."""
        text = f"{self.method} · λ {self.lam:.2f}"
        if self.lam_schedule:
            text += f" · schedule {','.join(f'{v:g}' for v in self.lam_schedule)}"
        if self.module_lams:
            text += " · " + " ".join(f"{kind} {lam:.2f}" for kind, lam in self.module_lams)
        if self.layers:
            text += f" · layers {self.layers}"
        if self.modules:
            text += f" · {'+'.join(self.modules)}"
        return text

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only; ``MergeSpec.from_json(spec.to_json()) == spec``."""
        return {
            "method": self.method,
            "lam": self.lam,
            "params": dict(self.params),
            "layers": self.layers,
            "modules": None if self.modules is None else list(self.modules),
            "lam_schedule": None if self.lam_schedule is None else list(self.lam_schedule),
            "seed": self.seed,
            "module_lams": None if self.module_lams is None else dict(self.module_lams),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MergeSpec:
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise UserError(f"unknown merge spec key {unknown[0]!r}; known: {', '.join(SPEC_KEYS)}")
        return cls(**data)


SPEC_KEYS: tuple[str, ...] = tuple(MergeSpec.__dataclass_fields__)


def specs_for(methods: Iterable[str], lams: Iterable[float], **common: Any) -> list[MergeSpec]:
    """The grid ``methods × lams`` as specs sharing ``common`` fields (params per method
    come as ``params={method: {...}}``)."""
    per_method = common.pop("params", {}) or {}
    lams = tuple(lams)
    return [
        MergeSpec(method, lam, per_method.get(method) or {}, **common)
        for method in methods
        for lam in lams
    ]
