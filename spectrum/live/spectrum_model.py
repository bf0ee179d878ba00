"""One model that runs every λ of an affine merge at once, a λ per sequence.

For the methods that are affine in λ (linear, task_arithmetic, dare, twin, lore) every
merged tensor is θ(λ) = (1−λ)·E₀ + λ·E₁ with E₀ = θ(0) and E₁ = θ(1). A module whose
output is affine in its tensors (linear and embedding weights, scaled embeddings, norm
gains ``w`` or ``1 + w``, biases) computes the merged module's output for sequence b as
``lerp(f(x_b; E₀), f(x_b; E₁), λ_b)``; nonlinearities (activations, softmax, attention)
then run on the merged activations, as in the merged model. Fused experts mix each
token's projections the same way; small tensors entering non-linearly (attention sinks,
routers, correction biases) are materialised per distinct λ. Which form a module takes is
measured, not looked up by class (``spectrum.live.spectrum_modules``); a pair with a module
none of the forms serves raises ``SpectrumUnavailable``, and callers re-merge per λ.

Construction: the model is loaded from the direct parent (E₀ = θ_D wherever the merge does
not reach), then every in-scope checkpoint tensor (parameters and persistent buffers) gets
E₀ and E₁ from the method's own ``prepare`` / ``apply`` at λ = 0 and λ = 1 (for
``linear``: the parents themselves, so no float32 copy is ever made). E₁ lives in one
extra tensor per in-scope tensor, laid out like it, and is reached through the same
checkpoint views as E₀ (``spectrum.live.views``), which handles fused 3-D experts. Modules
outside the merge scope stay plain modules with one copy of their weights. Memory: one
model plus one copy of the in-scope tensors, in the parents' dtype.

Per-sequence λ, thread-safe: a call carries its λs as a ``(batch, groups)`` tensor of
strengths, one column per (layer, module kind) group — the two things a ``MergeScope``
decides a tensor's strength from, so per-layer λ schedules and partial scopes come out
right. The tensor travels as a model keyword argument (``spectrum_strengths``), so
``generate()`` expands it with the rows for ``num_return_sequences`` / beams exactly as
it expands the attention mask. A forward pre-hook on the model takes it out of the
keyword arguments and puts it in a ``ContextVar`` for the duration of that forward;
every thread has its own context, so concurrent ``generate()`` calls from several threads
(a dashboard) each see their own λs, and nothing is shared or mutated between calls. The
spectrum modules read it and fail loudly when a forward was called without λs.

Exactness: rows at λ = 0 and λ = 1 compute ``lerp`` at 0 / 1, which returns y₀ / y₁
exactly (except that −0 may become +0), so a dense model's λ = 0 and λ = 1 rows are the
parents (``linear``) or the merged endpoints (other methods) bit for bit. Fused
experts run the eager per-expert loop on the tokens routed to each expert; another λ in the
batch changes how many tokens an expert sees, so the matmul shapes — and the last bits —
can differ from the parent's. Other λ are within float32 rounding of the separately merged
model: lerp of two products is not the product with the lerped weight, bit for bit.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.generate.template import load_tokenizer
from spectrum.live.loading import load_model
from spectrum.live.spectrum_modules import STRENGTHS as _STRENGTHS
from spectrum.live.spectrum_modules import (
    AffineModule,
    SpectrumUnavailable,
    choose_form,
    record_inputs,
)
from spectrum.live.views import checkpoint_views
from spectrum.merge.scope import MergeScope, layer_of, module_of
from spectrum.merge.spec import MergeSpec, check_lam
from spectrum.methods import MergeMethod, Parents, get_method, resolve_params
from spectrum.weights.checkpoint import Checkpoint, open_checkpoint
from spectrum.weights.validate import check_finite

AFFINE_METHODS = ("linear", "task_arithmetic", "dare", "twin", "lore")
STRENGTHS_KWARG = "spectrum_strengths"


def check_affine(method: str) -> None:
    get_method(method)  # an unknown name gets the registry's own message
    if method not in AFFINE_METHODS:
        raise SpectrumUnavailable(
            f"method {method} is not affine in λ, so one model cannot serve every λ; "
            f"the spectrum model takes {', '.join(AFFINE_METHODS)}"
        )


def check_lams(lams: Sequence[float]) -> None:
    for lam in lams:
        check_lam(lam)


_SPECTRUM_CLASSES: dict[tuple[type, type], type] = {}


def _spectrum_class(cls: type, form: type) -> type:
    """The spectrum version of a module class: ``form``'s forward over ``cls``."""
    if (cls, form) not in _SPECTRUM_CLASSES:
        _SPECTRUM_CLASSES[cls, form] = type(
            f"Spectrum{cls.__name__}", (form, cls), {"spectrum_original": cls}
        )
    return _SPECTRUM_CLASSES[cls, form]


class SpectrumModel:
    """A transformers causal LM holding E₀ and E₁: ``forward`` / ``generate`` with a λ per row.

    Build it with ``SpectrumModel.load(direct, thinking, base, method=..., ...)``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        method: str,
        params: dict[str, Any],
        seed: int,
        scope: MergeScope,
        groups: list[str],
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.params = params
        self.seed = seed
        self.scope = scope
        self.num_layers = int(model.config.num_hidden_layers)
        # One representative checkpoint name per strength column: a scope decides a
        # tensor's strength from its layer and module kind only.
        self.groups = groups
        model.__class__ = _spectrum_causal_lm(type(model))

    @classmethod
    @torch.no_grad()
    def load(
        cls,
        direct: str | Path,
        thinking: str | Path,
        base: str | Path | None = None,
        *,
        method: str = "linear",
        params: dict[str, Any] | None = None,
        seed: int = 0,
        scope: MergeScope | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
    ) -> SpectrumModel:
        """Load the direct parent and add E₁ (and E₀ for methods other than linear).

        Parents are read one tensor at a time, so the peak is the model plus its E₁ copy
        plus one tensor's float32 preparation.
        """
        check_affine(method)
        merge_method = get_method(method)
        if merge_method.needs_base and base is None:
            raise UserError(f"method {method} needs a base model; pass --base")
        params = resolve_params(merge_method, params)
        scope = scope or MergeScope()
        target = resolve_device(device)
        roles = (("direct", direct), ("thinking", thinking), ("base", base))
        checkpoints = {role: open_checkpoint(path) for role, path in roles if path is not None}
        tokenizer = load_tokenizer(checkpoints["direct"].path)  # before the weights: fail fast
        model = load_model(checkpoints["direct"], target, dtype)
        scope.check_layers(int(model.config.num_hidden_layers))
        stored = set(checkpoints["direct"].names())
        endpoints = _Endpoints(model, scope, merge_method, params, seed, stored)
        endpoints.fill(checkpoints)
        groups = endpoints.install()
        return cls(
            model, tokenizer, method=method, params=params, seed=seed, scope=scope, groups=groups
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    def spec(self, lam: float) -> dict[str, Any]:
        """The merge one row at ``lam`` runs: what ``spectrum merge`` would be given."""
        return dict(
            method=self.method, lam=lam, params=self.params, seed=self.seed,
            scope=self.scope.describe(),
        )  # fmt: skip

    def serves(self, spec: MergeSpec) -> bool:
        """Whether a row of this model is exactly ``spec``'s merge (up to float rounding).

        Its own method, parameters and seed, and its own scope, with λ per module kind on
        top; a whole-model ``linear`` model (E₀ = θ_D) also serves any narrower linear
        scope, since a group outside that scope at strength 0 is θ_D.
        """
        if (spec.method, dict(spec.params), spec.seed) != (self.method, self.params, self.seed):
            return False
        if self.method == "linear" and self.scope == MergeScope():
            return True
        return replace(spec.scope, module_lams=None) == self.scope

    def strengths(self, lams: Sequence[float | MergeSpec]) -> Tensor:
        """(rows, groups) float32 strengths: each group's merge strength for each row, a λ
        (this model's scope) or a ``MergeSpec`` it ``serves``."""
        table = [self._row_strengths(row) for row in lams]
        return torch.tensor(table, dtype=torch.float32, device=self.device).view(
            len(lams), len(self.groups)
        )

    def _row_strengths(self, row: float | MergeSpec) -> list[float]:
        if not isinstance(row, MergeSpec):
            check_lam(row)
            return [
                self.scope.strength_for(name, float(row), self.num_layers) for name in self.groups
            ]
        if not self.serves(row):
            raise UserError(f"this spectrum model ({self.method}) cannot serve {row.label()}")
        check_lam(row.lam)
        # Outside the row's scope a group keeps θ_D: strength 0 (E₀ is θ_D there).
        return [
            row.scope.strength_for(name, row.lam, self.num_layers) or 0.0 for name in self.groups
        ]

    def forward(
        self, input_ids: Tensor, lams: Sequence[float | MergeSpec] | Tensor, **kwargs: Any
    ) -> Any:
        """The model's forward (logits and all), row b merged at ``lams[b]``; ``lams`` may
        be ``strengths(...)``'s table itself, which a decode loop computes once per batch
        composition rather than once per step."""
        self._check_rows(input_ids, lams)
        if not isinstance(lams, Tensor):
            lams = self.strengths(lams)
        elif lams.shape[1:] != (len(self.groups),):
            raise ValueError(f"a strengths table has {len(self.groups)} columns, not {lams.shape}")
        return self.model(input_ids=input_ids, **{STRENGTHS_KWARG: lams}, **kwargs)

    __call__ = forward

    def generate(self, input_ids: Tensor, lams: Sequence[float], **kwargs: Any) -> Tensor:
        """``model.generate`` with row b merged at ``lams[b]`` (its returned sequences too)."""
        self._check_rows(input_ids, lams)
        return self.model.generate(
            input_ids=input_ids, **{STRENGTHS_KWARG: self.strengths(lams)}, **kwargs
        )

    @property
    def onednn(self) -> bool:
        """Whether affine linear layers multiply by oneDNN's kernel on CPU (faster on
        several rows; rounds differently from the plain model's, so rows are then equal to
        the merged models' to float rounding, endpoints included, not bit for bit)."""
        return any(m.spectrum_onednn for m in self._affine_modules())

    @onednn.setter
    def onednn(self, value: bool) -> None:
        for module in self._affine_modules():
            module.spectrum_onednn = value

    def _affine_modules(self) -> list[AffineModule]:
        return [m for m in self.model.modules() if isinstance(m, AffineModule)]

    def held_bytes(self) -> int:
        """Bytes of every tensor the model holds (parameters, E₁ copies, buffers), once each."""
        seen: dict[int, int] = {}
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    @staticmethod
    def _check_rows(input_ids: Tensor, lams: Sequence[float | MergeSpec] | Tensor) -> None:
        if len(lams) != input_ids.shape[0]:
            raise UserError(
                f"{len(lams)} λ values for {input_ids.shape[0]} sequences; give one each"
            )


def _spectrum_causal_lm(cls: type) -> type:
    """``cls`` whose forward takes ``spectrum_strengths`` and holds it for its duration.

    The keyword is a declared parameter (the signature is the original one plus it), so
    ``generate()`` accepts it, expands it with the rows and hands it to every step, and
    still sees the original parameters (``logits_to_keep``...).
    """
    base_forward = cls.forward

    def forward(self, *args: Any, spectrum_strengths: Tensor | None = None, **kwargs: Any) -> Any:
        # Set even when None: a forward without λs must fail, not reuse an earlier call's.
        token = _STRENGTHS.set(spectrum_strengths)
        try:
            return base_forward(self, *args, **kwargs)
        finally:
            _STRENGTHS.reset(token)

    signature = inspect.signature(base_forward)
    parameters = list(signature.parameters.values())
    extra = inspect.Parameter(STRENGTHS_KWARG, inspect.Parameter.KEYWORD_ONLY, default=None)
    last = len(parameters) - (parameters[-1].kind == inspect.Parameter.VAR_KEYWORD)
    forward.__signature__ = signature.replace(
        parameters=[*parameters[:last], extra, *parameters[last:]]
    )
    return type(f"Spectrum{cls.__name__}", (cls,), {"forward": forward})


class _Endpoints:
    """E₀ / E₁ of every in-scope checkpoint tensor, written through the model's views."""

    def __init__(
        self,
        model: PreTrainedModel,
        scope: MergeScope,
        method: MergeMethod,
        params: dict[str, Any],
        seed: int,
        stored: set[str],
    ):
        self.model, self.scope, self.method = model, scope, method
        self.params, self.seed = params, seed
        self.num_layers = int(model.config.num_hidden_layers)
        self.views = checkpoint_views(model)
        owners = {t.untyped_storage().data_ptr(): t for t in _owners(model)}
        # Names a merge changes: floating checkpoint tensors in scope (the in-scope test is
        # λ-free); a buffer the checkpoint does not store keeps what the model computed.
        self.names = [
            name
            for name, view in self.views.items()
            if name in stored and view.is_floating_point() and self._in_scope(name)
        ]
        self.owner = {
            name: owners[self.views[name].untyped_storage().data_ptr()] for name in self.names
        }
        # E₁ starts as a copy of E₀: a tensor part that no in-scope name covers stays θ_D
        # at every λ, as it does in the merged model.
        self.at_one: dict[int, Tensor] = {}
        for tensor in self.owner.values():  # once per tensor: 256 names share a MoE one
            if id(tensor) not in self.at_one:
                self.at_one[id(tensor)] = tensor.detach().clone()

    def _in_scope(self, name: str) -> bool:
        return self.scope.strength_for(name, 0.0, self.num_layers) is not None

    def _view_at_one(self, name: str) -> Tensor:
        view, tensor = self.views[name], self.owner[name]
        offset = view.storage_offset() - tensor.storage_offset()
        return self.at_one[id(tensor)].as_strided(view.shape, view.stride(), offset)

    def fill(self, checkpoints: dict[str, Checkpoint]) -> None:
        device = self.model.device
        for name in self.names:
            if self.method.name == "linear":
                # E₀ is the direct parent the model was loaded from; E₁ the thinking one.
                at_one = checkpoints["thinking"].get(name)
                check_finite(self.views[name], name, "direct")
                check_finite(at_one, name, "thinking")
                self._view_at_one(name).copy_(at_one)
                continue
            tensors = {}
            for role, ckpt in checkpoints.items():
                tensors[role] = ckpt.get(name)
                check_finite(tensors[role], name, role)
                tensors[role] = tensors[role].to(device, torch.float32)
            parents = Parents(name, tensors["direct"], tensors["thinking"], tensors.get("base"))
            prepared = self.method.prepare(parents, self.params, self.seed)
            self.views[name].copy_(self.method.apply(prepared, 0.0, self.params, None))
            self._view_at_one(name).copy_(self.method.apply(prepared, 1.0, self.params, None))

    def install(self) -> list[str]:
        """Swap every module that owns an in-scope tensor for its spectrum form.

        The forms are chosen first, on the untouched model (``choose_form`` measures each
        candidate on its recorded inputs), then every candidate is swapped.
        Returns one representative checkpoint name per strength column.
        """
        group_of = {id(self.owner[n]): (layer_of(n), module_of(n), n) for n in self.names}
        for name in self.names:
            key = group_of[id(self.owner[name])]
            if key[:2] != (layer_of(name), module_of(name)):
                raise SpectrumUnavailable(f"tensor holding {name} mixes layers or module kinds")
        candidates = []
        for label, module in self.model.named_modules():
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            owned = [(tname, t) for tname, t in own if id(t) in self.at_one]
            if owned:
                candidates.append((label, module, owned))
        inputs = record_inputs(self.model, [module for _, module, _ in candidates])
        forms = [
            choose_form(module, [tname for tname, _ in owned], inputs.get(id(module)), label)
            for label, module, owned in candidates
        ]
        columns: dict[tuple, int] = {}
        groups: list[str] = []
        for (label, module, owned), form in zip(candidates, forms, strict=True):
            keys = {group_of[id(t)][:2] for _, t in owned}
            if len(keys) > 1:
                raise SpectrumUnavailable(
                    f"{label} ({type(module).__name__}) mixes layers or module kinds"
                )
            key = keys.pop()
            if key not in columns:
                columns[key] = len(groups)
                groups.append(group_of[id(owned[0][1])][2])
            module.__class__ = _spectrum_class(type(module), form)
            module.spectrum_column = columns[key]
            module.spectrum_names = tuple(tname for tname, _ in owned)
            for tname, tensor in owned:
                # Not persistent: state_dict() stays the E₀ model's; .to() still moves it.
                module.register_buffer(f"{tname}_at_one", self.at_one[id(tensor)], persistent=False)
        return groups


def _owners(model: nn.Module) -> list[Tensor]:
    """Parameters (as Parameters: modules hold them so) and persistent buffers."""
    state = model.state_dict(keep_vars=True)
    buffers = [b for name, b in model.named_buffers() if name in state]
    return [*model.parameters(), *buffers]


class SpectrumRow:
    """One merge of a spectrum model with a plain model's ``generate`` and ``device``, so
    code written for a transformers model (the chat's streamer) runs it unchanged."""

    def __init__(self, spectrum: SpectrumModel, spec: MergeSpec) -> None:
        if not spectrum.serves(spec):
            raise UserError(f"this spectrum model ({spectrum.method}) cannot serve {spec.label()}")
        self.spectrum, self.spec = spectrum, spec

    @property
    def device(self) -> torch.device:
        return self.spectrum.device

    def generate(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        return self.spectrum.generate(input_ids, [self.spec] * input_ids.shape[0], **kwargs)
