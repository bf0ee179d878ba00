"""How each module of a spectrum model serves a λ per row, decided by what it computes.

A module owning in-scope tensors (parameters or checkpoint buffers) gets one of three forms:

- **affine**: its output is an affine function of those tensors (linear and embedding
  weights, biases, scaled embeddings, norm gains ``w`` or ``1 + w``...). Then the output
  at θ(λ) = (1−λ)·E₀ + λ·E₁ is (1−λ)·f(E₀) + λ·f(E₁): the module runs once with E₀ and
  once with E₁ and mixes the two outputs per row.
- **experts**: a fused mixture-of-experts module declared through transformers' experts
  interface (``use_experts_implementation``: its flags say how gate, up and down
  projections, biases and the gate function combine). Each token's expert projections
  are mixed at its row's λ, as the affine form does for a linear layer.
- **per row**: anything else (an attention sink, a router whose top-k reads its weights,
  a correction bias) holds small tensors: the rows of each distinct λ run the module
  once with its tensors materialised at that λ.

Which form applies is measured, not looked up: before any module is swapped, one forward
of the model records each candidate's inputs; the module then runs on them with random
stand-ins r, r² − 1 and their midpoint for its tensors, and is affine when the midpoint's
output is the outputs' midpoint. An experts module must reproduce its own output through
the generic expert computation. What none of the forms covers (a large tensor entering
non-affinely) is refused, naming the module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from transformers.cache_utils import Cache

from spectrum.errors import UserError


class SpectrumUnavailable(UserError):
    """The spectrum model cannot serve this pair or method; callers re-merge per λ."""


# The running forward's strengths, (batch, groups): set by the model's forward, per thread.
STRENGTHS: ContextVar[Tensor | None] = ContextVar("spectrum_strengths", default=None)
# Elements of in-scope tensors a per-row module may hold: each distinct λ of a batch
# materialises them once per forward (a DeepSeek-V3 router: 1.8 M).
PER_ROW_LIMIT = 1 << 24


def current_strengths() -> Tensor:
    strengths = STRENGTHS.get()
    if strengths is None:
        raise RuntimeError("a spectrum model ran without λs; call it through SpectrumModel")
    return strengths


# The running forward's strengths on the host, and per column whether every row sits at
# strength 0 or every row at 1: one device-to-host copy per forward, not one per module.
_ENDPOINTS: ContextVar[tuple[Tensor, list[list[float]], dict] | None] = ContextVar(
    "spectrum_endpoints", default=None
)


def shared_endpoint(column: int) -> float | None:
    """0.0 or 1.0 when every row of this forward has that strength in ``column``, else
    None."""
    strengths = current_strengths()
    held = _ENDPOINTS.get()
    if held is None or held[0] is not strengths:  # a new forward, or a per-row group's rows
        held = (strengths, strengths.tolist(), {})
        _ENDPOINTS.set(held)
    shared = held[2]
    if column not in shared:
        values = {row[column] for row in held[1]}
        shared[column] = values.pop() if len(values) == 1 and values <= {0.0, 1.0} else None
    return shared[column]


def row_weights(output: Tensor, column: int) -> Tensor:
    """This module's strength per row of ``output``, shaped to broadcast against it.

    ``output`` is (batch, ...) or, inside MoE blocks, (batch·tokens, ...) with the tokens
    of one sequence consecutive (a ``view(-1, hidden)`` of (batch, tokens, hidden)).
    """
    weights = current_strengths()[:, column]
    if output.shape[0] != weights.shape[0]:
        weights = weights.repeat_interleave(output.shape[0] // weights.shape[0])
    return weights.view(-1, *([1] * (output.ndim - 1)))


def mix(at_zero: Tensor, at_one: Tensor, weight: Tensor | float) -> Tensor:
    """(1−w)·at_zero + w·at_one, exact at w = 0 and w = 1; float32 math for half dtypes."""
    if at_zero.dtype == torch.float32:
        return torch.lerp(at_zero, at_one, weight)
    return torch.lerp(at_zero.float(), at_one.float(), weight).to(at_zero.dtype)


def onednn_usable(x: Tensor, weight: Tensor) -> bool:
    """Whether oneDNN's linear kernel can take this product: CPU, float32 or bfloat16,
    a contiguous weight, and a PyTorch built with oneDNN."""
    return (
        x.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
        and x.dtype == weight.dtype
        and weight.is_contiguous()
        and torch.backends.mkldnn.is_available()
    )


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, onednn: bool = False) -> Tensor:
    """``F.linear`` over ``x`` flattened to rows (``onednn``: by oneDNN's kernel on CPU).

    matmul folds a [b, t, n] input into one matrix product only when its strides allow a
    view; the last position sliced out of a prompt (``logits_to_keep``) does not, and it
    then copies the transposed weight for a batched product instead: for Qwen3's
    151,936-row head that is 297 MB and 2 s of CPU per generation.

    Why oneDNN: on this project's CPU (AMD EPYC, AVX-512) MKL's sgemm spends 3–4× a
    one-row product's time on eight rows, oneDNN 1.5× (bench/RESULTS.md, serve section),
    and a spectrum batch is several rows against each of E₀ and E₁. Its sums round
    differently from MKL's, so a row is no longer bit for bit the plain model's (float32
    rounding only): callers opt in (``SpectrumModel.onednn``).
    """
    rows = x.reshape(-1, x.shape[-1])
    if onednn and onednn_usable(rows, weight):
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
    else:
        out = F.linear(rows, weight, bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def _map(fn: Callable[..., Any], *trees: Any) -> Any:
    """``fn`` over the tensors of equally shaped nests of tuples, lists and dicts."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    if isinstance(first, (tuple, list)):
        return type(first)(_map(fn, *parts) for parts in zip(*trees, strict=True))
    if isinstance(first, dict):
        return {key: _map(fn, *(tree[key] for tree in trees)) for key in first}
    return first


def twin(module: nn.Module, tensors: dict[str, Tensor]) -> nn.Module:
    """A shallow copy of ``module`` (its original class, its submodules) with ``tensors``
    in place of its own parameters / buffers of those names; the module is not touched,
    so threads running it concurrently are unaffected."""
    copy = object.__new__(getattr(module, "spectrum_original", type(module)))
    copy.__dict__ = dict(module.__dict__)
    copy._parameters = dict(module._parameters)
    copy._buffers = dict(module._buffers)
    for name, tensor in tensors.items():
        (copy._parameters if name in copy._parameters else copy._buffers)[name] = tensor
    return copy


class SpectrumModule(nn.Module):
    """What every spectrum module holds: its column and, as non-persistent buffers
    ``<name>_at_one`` (``.to()`` moves them, ``state_dict()`` stays E₀'s), its in-scope
    tensors at λ = 1; E₀ is the tensor itself."""

    spectrum_column: int
    spectrum_original: type
    spectrum_names: tuple[str, ...]
    spectrum_onednn: bool = False  # linear products by oneDNN (``_linear``)

    @property
    def spectrum_at_one(self) -> dict[str, Tensor]:
        return {name: self._buffers[f"{name}_at_one"] for name in self.spectrum_names}

    def _at_zero(self) -> dict[str, Tensor]:
        own = {**self._parameters, **self._buffers}
        return {name: own[name] for name in self.spectrum_names}


class AffineModule(SpectrumModule):
    """Runs with E₀ and with E₁ and mixes the outputs per row."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.spectrum_original.forward is nn.Linear.forward:  # F.linear: skip the twin
            return self._linear_forward(args[0] if args else kwargs["input"])
        at_zero = self.spectrum_original.forward(self, *args, **kwargs)
        at_one = twin(self, self.spectrum_at_one).forward(*args, **kwargs)

        def mixed(zero: Tensor, one: Tensor) -> Tensor:
            if not zero.is_floating_point():
                return zero
            return mix(zero, one, row_weights(zero, self.spectrum_column))

        return _map(mixed, at_zero, at_one)

    def _linear_forward(self, x: Tensor) -> Tensor:
        """A linear layer: both products mixed per row, or one when every row is at the
        same endpoint (a parent's column, a sweep batch of one λ). Rows are not split by
        endpoint: at a few rows a product costs about the same for one row fewer, and the
        gathers cost more (measured: serve ratio 2.3× with a split, 2.5× without)."""
        fast, column = self.spectrum_onednn, self.spectrum_column
        one_weight = self.spectrum_at_one.get("weight", self.weight)
        one_bias = self.spectrum_at_one.get("bias", self.bias)
        shared = shared_endpoint(column)
        if shared == 0.0:  # the E₀ model's own product, bit for bit
            return _linear(x, self.weight, self.bias, fast)
        if shared == 1.0:
            return _linear(x, one_weight, one_bias, fast)
        at_zero = _linear(x, self.weight, self.bias, fast)
        at_one = _linear(x, one_weight, one_bias, fast)
        return mix(at_zero, at_one, row_weights(at_zero, column))


def expert_forward(
    module: nn.Module,
    hidden_states: Tensor,
    top_k_index: Tensor,
    top_k_weights: Tensor,
    tensors: Callable[[str, int], tuple[Tensor, ...]] | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """The experts computation transformers' experts interface defines, by its flags.

    ``tensors(name, expert)`` gives the weight(s) of one expert (default: the module's
    own); with several, each projection runs once per weight set and the results are
    mixed per token by ``weights`` (tokens, 1).
    """
    own = tensors or (lambda name, expert: (getattr(module, name)[expert],))
    experts = module.num_experts
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask[:experts].sum(dim=(-1, -2)), 0).nonzero()
    up_name = "gate_up_proj" if module.has_gate else "up_proj"

    def project(state: Tensor, name: str, expert: int, rows: Tensor) -> Tensor:
        outs = []
        for index, weight in enumerate(own(name, expert)):
            out = state @ weight if module.is_transposed else F.linear(state, weight)
            if module.has_bias:
                out = out + own(f"{name}_bias", expert)[index]
            outs.append(out)
        return outs[0] if len(outs) == 1 else mix(outs[0], outs[1], rows)

    for expert in hit[:, 0].tolist():
        top_k_pos, token_idx = torch.where(mask[expert])
        state = hidden_states[token_idx]
        rows = weights[token_idx] if weights is not None else None
        state = project(state, up_name, expert, rows)
        state = module._apply_gate(state) if module.has_gate else module.act_fn(state)
        state = project(state, "down_proj", expert, rows)
        state = state * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, state.to(final.dtype))
    return final


class ExpertsModule(SpectrumModule):
    """Fused experts: each token's projections mixed at its row's λ."""

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        own = {**self._parameters, **self._buffers}
        at_one = self.spectrum_at_one

        def tensors(name: str, expert: int) -> tuple[Tensor, ...]:
            return own[name][expert], at_one.get(name, own[name])[expert]

        weights = row_weights(hidden_states, self.spectrum_column)  # (tokens, 1)
        return expert_forward(self, hidden_states, top_k_index, top_k_weights, tensors, weights)


class PerRowModule(SpectrumModule):
    """The rows of each distinct λ run the module with its tensors materialised at λ."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        strengths = current_strengths()
        column = strengths[:, self.spectrum_column]
        values = column.unique().tolist()
        if len(values) == 1:
            return self._at(values[0]).forward(*args, **kwargs)
        batch = strengths.shape[0]
        per = _tokens_per_row(args, kwargs, batch)
        caches = _SplitCache.found(args, kwargs)

        def run(value: float) -> tuple[Tensor, Any]:
            """The rows at ``value``, run with the module's tensors materialised there."""
            rows = (column == value).nonzero().view(-1)
            token = STRENGTHS.set(strengths[rows])  # what the submodules read: these rows
            try:
                row_args, row_kwargs = _take((args, kwargs), rows, batch, per, caches)
                return rows, self._at(value).forward(*row_args, **row_kwargs)
            except _Pending:
                return rows, _SplitCache.PENDING
            finally:
                STRENGTHS.reset(token)

        outputs = [run(value) for value in values]
        if any(out is _SplitCache.PENDING for _, out in outputs):
            # Every group has handed its keys/values over: one real cache update for the
            # whole batch, then each group runs again on its rows of the result.
            for cache in caches.values():
                cache.flush(batch)
            outputs = [run(value) for value in values]
        return _gather(outputs, batch)

    def _at(self, value: float) -> nn.Module:
        """This module with its in-scope tensors at ``value`` (E₀ and E₁ as they are)."""
        if value == 0.0:
            return twin(self, {})
        at_one = self.spectrum_at_one
        if value == 1.0:
            return twin(self, at_one)
        return twin(self, {n: mix(t, at_one[n], value) for n, t in self._at_zero().items()})


class _Pending(Exception):
    """A group's forward reached its cache update before every group's keys were known."""


class _SplitCache:
    """Stands in for a KV cache while a per-row module runs group by group.

    The first round records each group's new keys/values and stops the group there; then
    the real cache is updated once for the whole batch (its layers keep their own rules:
    sliding windows, static buffers), and the second round hands each group its rows of
    what the update returned. Anything else is asked of the real cache.
    """

    PENDING = object()

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.pending: list[tuple[Tensor, Tensor, Tensor, tuple, dict]] = []
        self.result: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def found(args: tuple, kwargs: dict) -> dict[int, _SplitCache]:
        caches = [v for v in (*args, *kwargs.values()) if isinstance(v, Cache)]
        return {id(cache): _SplitCache(cache) for cache in caches}

    def rows(self, rows: Tensor) -> _RowsCache:
        return _RowsCache(self, rows)

    def flush(self, batch: int) -> None:
        if not self.pending:
            return
        extra_args, extra_kwargs = self.pending[0][3], self.pending[0][4]
        if any(isinstance(v, Tensor) for v in (*extra_args, *extra_kwargs.values())):
            raise SpectrumUnavailable("a per-row module passes tensors to its cache update")
        full = []
        for part in (1, 2):
            first = self.pending[0][part]
            whole = first.new_empty((batch, *first.shape[1:]))
            for entry in self.pending:
                whole.index_copy_(0, entry[0], entry[part])
            full.append(whole)
        self.result = self.cache.update(full[0], full[1], *extra_args, **extra_kwargs)


class _RowsCache:
    def __init__(self, split: _SplitCache, rows: Tensor) -> None:
        self._split, self._rows = split, rows

    def update(self, key: Tensor, value: Tensor, *args: Any, **kwargs: Any):
        if self._split.result is None:
            self._split.pending.append((self._rows, key, value, args, kwargs))
            raise _Pending
        keys, values = self._split.result
        return keys.index_select(0, self._rows), values.index_select(0, self._rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._split.cache, name)


def _tokens_per_row(args: tuple, kwargs: dict, batch: int) -> int:
    """Leading-dimension entries per row of the module's main input (tokens when a MoE
    block flattened (batch, tokens, hidden) to (batch·tokens, hidden), else 1)."""
    first = next(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))
    return max(1, first.shape[0] // batch)


def _take(tree: Any, rows: Tensor, batch: int, per: int, caches: dict) -> Any:
    """The parts of the inputs that belong to ``rows``: tensors of two or more dimensions
    led by the batch (or batch·per) dimension; caches through their stand-in."""
    if isinstance(tree, Cache):
        return caches[id(tree)].rows(rows)
    if isinstance(tree, Tensor):
        if tree.dim() >= 2 and tree.shape[0] in (batch, batch * per):
            return tree.index_select(0, _indices(rows, tree.shape[0] // batch))
        return tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(_take(part, rows, batch, per, caches) for part in tree)
    if isinstance(tree, dict):
        return {key: _take(part, rows, batch, per, caches) for key, part in tree.items()}
    return tree


def _indices(rows: Tensor, per: int) -> Tensor:
    return (rows[:, None] * per + torch.arange(per, device=rows.device)).view(-1)


def _gather(outputs: list[tuple[Tensor, Any]], batch: int) -> Any:
    """The groups' outputs put back in row order."""

    def put(*parts: Tensor) -> Tensor:
        per = parts[0].shape[0] // len(outputs[0][0])
        whole = parts[0].new_empty((batch * per, *parts[0].shape[1:]))
        for (rows, _), part in zip(outputs, parts, strict=True):
            whole.index_copy_(0, _indices(rows, per), part)
        return whole

    return _map(put, *(out for _, out in outputs))


# ---- choosing the form: one recorded forward, then a measurement per module ----


@torch.no_grad()
def record_inputs(model: nn.Module, modules: list[nn.Module]) -> dict[int, tuple]:
    """Each module's (args, kwargs) at its first call in one short forward of ``model``."""
    seen: dict[int, tuple] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.setdefault(id(module), (args, kwargs))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        vocab = int(model.get_input_embeddings().weight.shape[0])
        ids = torch.arange(8, device=model.device).remainder(vocab).view(2, 4)
        model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def is_experts(module: nn.Module) -> bool:
    """Declared through transformers' experts interface (its decorator sets these flags)."""
    return all(hasattr(module, flag) for flag in ("has_gate", "has_bias", "is_transposed"))


@torch.no_grad()
def choose_form(module: nn.Module, names: list[str], inputs: tuple | None, label: str) -> type:
    """AffineModule, ExpertsModule or PerRowModule for ``module``, whose in-scope own
    tensors are ``names``; UserError naming ``label`` when none serves it exactly."""
    if inputs is None:
        raise SpectrumUnavailable(
            f"the spectrum model saw no call of {label} ({type(module).__name__})"
        )
    args, kwargs = inputs
    if is_experts(module):
        own = module(*args, **kwargs).double()
        generic = expert_forward(module, *args, **kwargs).double()
        scale = float(own.abs().max()) or 1.0
        if float((own - generic).abs().max()) <= _tolerance(module, names) * scale:
            return ExpertsModule
    elif _is_affine(module, names, args, kwargs):
        return AffineModule
    size = sum(getattr(module, name).numel() for name in names)
    if size <= PER_ROW_LIMIT:
        return PerRowModule
    raise SpectrumUnavailable(
        f"the spectrum model cannot serve {label} ({type(module).__name__}): "
        f"{size:,} elements enter it non-affinely"
    )


def _tolerance(module: nn.Module, names: list[str]) -> float:
    """Relative agreement expected of two ways to compute one thing in the module's dtype:
    rounding only (float32: 1e-4; bfloat16: 8 ulps, 6e-2). A nonlinearity measured with
    random stand-ins of unit scale is off by far more."""
    dtype = getattr(module, names[0]).dtype
    return max(1e-4, 8 * torch.finfo(dtype).eps)


def _is_affine(module: nn.Module, names: list[str], args: tuple, kwargs: dict) -> bool:
    """Whether the output at the midpoint of two parameter sets is the midpoint of the
    outputs, measured with random stand-ins r and r² − 1 (one buffer per tensor in its
    own dtype, drawn again from one seed for each of the three runs)."""
    own = {**module._parameters, **module._buffers}

    def run(shape: Callable[[Tensor], Tensor]) -> Any:
        generator = torch.Generator(device=own[names[0]].device).manual_seed(0)
        tensors = {}
        for name in names:  # in the tensor's dtype, in place: one tensor's bytes each
            tensor = own[name]
            draw = torch.randn(tensor.shape, generator=generator, device=tensor.device,
                               dtype=tensor.dtype)  # fmt: skip
            tensors[name] = shape(draw)
        return functional_call(module, tensors, args, kwargs, strict=False)

    first = run(lambda r: r)
    second = run(lambda r: r.mul_(r).sub_(1))
    middle = run(lambda r: r.addcmul_(r, r).sub_(1).div_(2))  # (r + r² − 1) / 2
    tolerance = _tolerance(module, names)
    agree = []

    def compare(a: Tensor, b: Tensor, m: Tensor) -> Tensor:
        if not a.is_floating_point():
            agree.append(torch.equal(a, m) and torch.equal(b, m))
        else:
            expected = (a.double() + b.double()) / 2
            scale = float(expected.abs().max()) or 1.0
            error = float((m.double() - expected).abs().max())
            agree.append(error <= tolerance * scale)
        return a

    _map(compare, first, second, middle)
    return bool(agree) and all(agree)
