"""The merge engine: stream tensors through a method, in memory or from checkpoint to folder.

Both APIs share one loop (``merge_stream``): for each tensor, read the parents, cast to
float32 on the merge device, ``prepare`` then ``apply`` at the tensor's strength, cast back
to the direct parent's dtype (a dequantized parent's: bfloat16). Elementwise methods
(linear, slerp, task_arithmetic, ties) and copied tensors go through in slices of ``CHUNK``
elements, read straight from the files, so memory holds a few slices whatever the model
and the float32 copies stay in cache; the others get whole tensors. An elementwise
method's ``tensor_stats`` (reduce, then apply: slerp's dot products, TIES's trim
thresholds) runs first over the same tensor's slices, re-read by a thread of its own a
tensor or two ahead, and reaches each slice's ``prepare`` as ``stats``. Tensors outside the
scope (and non-float tensors) are the direct parent's bytes untouched (dequantized ones:
rounded to bfloat16). Methods with ``global_stats`` first get streaming statistics
passes that re-read the parents, so no pass ever holds the model. The next pieces are read
(and prepared) by a background thread while the current one is merged, and a writer
thread puts finished bytes on disk.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.merge.scope import layer_of
from spectrum.merge.spec import MergeSpec
from spectrum.methods import MergeMethod, Parents
from spectrum.methods.common.base import chunk_spans
from spectrum.weights.output import tensor_nbytes
from spectrum.weights.validate import check_finite, check_merged_finite

log = logging.getLogger("spectrum.merge")
PREFETCH = 1  # whole tensors read ahead of the one being merged: enough to hide reads
CHUNK_PREFETCH = 4  # slices read ahead in the chunked path


class TensorSource(Protocol):
    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> Tensor: ...
    def get_slice(self, name: str, start: int, stop: int) -> Tensor: ...


class _MappingSource:
    def __init__(self, tensors: Mapping[str, Tensor]):
        self._tensors = tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._tensors[name].dtype

    def get(self, name: str) -> Tensor:
        return self._tensors[name]

    def get_slice(self, name: str, start: int, stop: int) -> Tensor:
        return self._tensors[name].reshape(-1)[start:stop]


def merge_stream(
    direct: TensorSource,
    thinking: TensorSource,
    base: TensorSource | None,
    spec: MergeSpec,
    names: list[str],
    num_layers: int,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, piece)`` in the order of ``names``: each tensor whole, or as flat pieces
    (consecutive slices of its flattened elements) when it is copied or the method is
    elementwise. ``spec`` must be ``checked()`` (parameters resolved). Everything runs one
    piece at a time; see the module docstring."""
    method, params, scope = spec.merge_method, dict(spec.params), spec.scope
    strengths = {name: scope.strength_for(name, spec.lam, num_layers) for name in names}
    merged = {n for n in names if strengths[n] is not None and direct.dtype(n).is_floating_point}
    as32 = dict(device=device, dtype=torch.float32)
    chunked = [name for name in names if name in merged and method.elementwise]
    stats_ahead = _TensorStats(method, params, (direct, thinking, base), chunked, as32)

    def load(item: tuple[str, tuple[int, int] | None]) -> tuple[Tensor | torch.dtype, Any]:
        """The raw piece when it is copied, else its dtype and the method's prepared tensors.

        Runs in the read-ahead thread: the next piece is read *and* prepared while the
        current one is applied, and the float32 parents are dropped as soon as prepared.
        """
        name, span = item

        def read(role: str, source: TensorSource) -> Tensor:
            piece = source.get(name) if span is None else source.get_slice(name, *span)
            # Checked here, as each piece streams by: no pass of its own over the parents.
            check_finite(piece, name, role, lambda: source.get(name))
            return piece

        raw = read("direct", direct)
        if name not in merged:  # a dequantized tensor is read in float32, kept in bfloat16
            return raw.to(direct.dtype(name)), None
        parents = Parents(
            name,
            raw.to(**as32),
            read("thinking", thinking).to(**as32),
            read("base", base).to(**as32) if base is not None else None,
            stats_ahead.of(name) if span is not None else None,
        )
        return direct.dtype(name), method.prepare(parents, params, spec.seed)

    stats = None
    if method.global_stats is not None:
        in_scope = [name for name in names if name in merged]

        def prepared_stream() -> Iterator[tuple[str, dict[str, Tensor]]]:
            items = [(name, None) for name in in_scope]
            bar = tqdm(total=len(items), desc="statistics", unit="tensor", disable=not progress)
            for (name, _), (_, tensors) in _read_ahead(items, load, PREFETCH):
                yield name, tensors
                bar.update()
            bar.close()

        lams = sorted({strengths[name] for name in in_scope})
        stats = method.global_stats(prepared_stream, lams, params)

    items = [item for name in names for item in _pieces(name, direct, name in merged, method)]
    total = sum(tensor_nbytes(direct.shape(name), direct.dtype(name)) for name in names)
    bar = tqdm(total=total, desc=f"merge {method.name}", unit="B", unit_scale=True,
               disable=not progress)  # fmt: skip
    prefetch = CHUNK_PREFETCH if method.elementwise else PREFETCH
    try:
        for (name, _), (kept, tensors) in _read_ahead(items, load, prefetch):
            if tensors is not None:
                merged_piece = method.apply(tensors, strengths[name], params, stats).to(kept)
                # Checked in the output dtype: a float32 value past float16's range is Inf.
                check_merged_finite(merged_piece, name, spec.label())
                kept = merged_piece.cpu()
            del tensors  # gone before the next read lands: the peak stays at a few pieces
            yield name, kept
            bar.update(kept.numel() * kept.element_size())
    finally:
        stats_ahead.close()
        bar.close()


def _pieces(
    name: str, source: TensorSource, is_merged: bool, method: MergeMethod
) -> list[tuple[str, tuple[int, int] | None]]:
    """Work items for one tensor: whole when the method needs it whole, else CHUNK slices."""
    if is_merged and not method.elementwise:
        return [(name, None)]
    return [(name, span) for span in chunk_spans(math.prod(source.shape(name)))]


class _TensorStats:
    """An elementwise method's ``tensor_stats`` per tensor: its own read passes over the
    tensor's slices, run by a thread up to ``LOOKAHEAD`` tensors ahead of the merge."""

    LOOKAHEAD = 2

    def __init__(self, method: MergeMethod, params: dict[str, Any],
                 sources: tuple[TensorSource, TensorSource, TensorSource | None],
                 names: list[str], as32: dict[str, Any]):  # fmt: skip
        self._method, self._params, self._sources, self._as32 = method, params, sources, as32
        self._order = names
        self._index = {name: i for i, name in enumerate(names)}
        self._submitted = 0
        self._futures: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spectrum-stats")

    def of(self, name: str) -> Any:
        if self._method.tensor_stats is None:
            return None
        position = self._index[name]
        while self._submitted <= min(position + self.LOOKAHEAD, len(self._order) - 1):
            ahead = self._order[self._submitted]
            self._futures[ahead] = self._pool.submit(self._stats, ahead)
            self._submitted += 1
        for passed in [n for n in self._futures if self._index[n] < position]:
            del self._futures[passed]
        return self._futures[name].result()

    def _stats(self, name: str) -> Any:
        numel = math.prod(self._sources[0].shape(name))

        def slices() -> Iterator[Parents]:
            for span in chunk_spans(numel):
                pieces = (
                    source.get_slice(name, *span).to(**self._as32) if source is not None else None
                    for source in self._sources
                )
                yield Parents(name, *pieces)

        return self._method.tensor_stats(slices, self._params)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def _read_ahead(
    items: list, read: Callable[[Any], Any], prefetch: int
) -> Iterator[tuple[Any, Any]]:
    """``(item, read(item))`` in order, with the next ``prefetch`` reads running in a thread."""
    upcoming = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="spectrum-read") as pool:
        pending: deque = deque()
        while True:
            while len(pending) <= prefetch and (item := next(upcoming, None)) is not None:
                pending.append((item, pool.submit(read, item)))
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result()


def merge_tensors(
    direct: Mapping[str, Tensor],
    thinking: Mapping[str, Tensor],
    base: Mapping[str, Tensor] | None = None,
    *,
    spec: MergeSpec | None = None,
    device: str = "cpu",
    allow_extrapolation: bool = False,
    **spec_fields: Any,
) -> dict[str, Tensor]:
    """Merge dicts of tensors (the parents' dtype out, on the CPU): ``spec``, or the spec
    that ``spec_fields`` describe (``method=``, ``lam=``, ``params=``, ``seed=``, ...)."""
    spec = spec if spec is not None else MergeSpec(**spec_fields)
    for role, other in (("thinking", thinking), ("base", base)):
        if other is None:
            continue
        if set(other) != set(direct):
            missing = sorted(set(direct) ^ set(other))[:5]
            raise UserError(f"direct and {role} have different tensor names: {missing}")
        wrong = [n for n in direct if tuple(direct[n].shape) != tuple(other[n].shape)]
        if wrong:
            raise UserError(f"direct and {role} differ in shape at {wrong[:5]}")
    layers = [layer for layer in map(layer_of, direct) if layer is not None]
    num_layers = max(layers, default=0) + 1
    spec = spec.checked(has_base=base is not None, allow_extrapolation=allow_extrapolation)
    sources = [_MappingSource(t) if t is not None else None for t in (direct, thinking, base)]
    stream = merge_stream(*sources, spec, list(direct), num_layers, device=resolve_device(device))
    return _assemble(stream, {name: tuple(t.shape) for name, t in direct.items()})


def _assemble(stream: Iterator[tuple[str, Tensor]], shapes: dict[str, tuple]) -> dict[str, Tensor]:
    """Whole tensors from the stream's pieces."""
    merged: dict[str, Tensor] = {}
    filled: dict[str, int] = {}
    for name, piece in stream:
        if name not in merged and tuple(piece.shape) == shapes[name]:
            merged[name] = piece  # a whole tensor
            continue
        if name not in merged:
            merged[name], filled[name] = torch.empty(shapes[name], dtype=piece.dtype), 0
        merged[name].view(-1)[filled[name] : filled[name] + piece.numel()] = piece
        filled[name] += piece.numel()
    return merged
