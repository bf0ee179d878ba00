"""The contract every merge method follows.

A method is split in two so that the same code serves the streaming file merge and the
live re-merge:

* ``prepare(parents, params, seed)`` does everything that does not depend on λ for one
  tensor (task vectors, masks, slerp angles, SVDs) and returns a small dict of tensors;
* ``apply(prepared, lam, params, stats)`` turns that into the merged float32 tensor.

The streaming engine calls prepare then apply tensor by tensor and throws both away;
the live merger keeps ``prepared`` resident so that a new λ costs one ``apply`` pass.

Methods that need a statistic over the *whole model* (EMR's rescalers, the global Top-K
threshold) also define ``global_stats``. It receives a factory that yields
``(name, prepared)`` for every merged tensor; it may call the factory more than once
(one pass per call, never holding the model) and returns an opaque ``stats`` object
that ``apply`` receives. ``lams`` is every strength ``apply`` will be called with, so a
threshold that depends on k = λ can be computed exactly for each. A stats object may
also define ``index()``: memory and one pass spent once, so that strengths outside
``lams`` need no pass of their own; the live merger, whose slider asks for such
strengths, calls it.

A method may also define ``index(parents)``: tensors that depend on the parents alone,
kept by the live merger (in host memory) across preparations and handed back to
``prepare`` in ``Parents.index``, so that a new parameter value (TIES's density) costs a
lookup where a fresh ``prepare`` would count a histogram.

Methods that are *elementwise* (each output element depends on the same element of the
parents only, plus per-tensor statistics) declare it, and the engine then runs ``prepare``
and ``apply`` on flat slices of ``CHUNK`` elements: memory stays at a few slices and the
float32 copies stay in cache. A per-tensor statistic they need first (slerp's dot
products, TIES's trim thresholds) is the method's ``tensor_stats(slices, params)``: "reduce,
then apply". ``slices()`` yields the tensor's ``Parents`` slice by slice, in order, and may
be called more than once (one read pass per call: an exact k-th largest takes two), so no
pass holds a whole float32 tensor. The engine runs it a tensor or two ahead and hands the
result to every slice's ``prepare`` as ``parents.stats``; given a whole tensor (the live
merger, ``stats`` None), ``prepare`` computes it over ``slices_of`` the same slices in the
same order, so a chunked merge and a whole-tensor one agree bit for bit.

All tensors handed to a method are float32 on the merge device; casting back to the
parents' dtype is the engine's job. λ convention (docs/METHODS.md):
λ = 0 gives the direct parent, λ = 1 the thinking parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

Prepared = dict[str, Tensor]
# Elements per slice in the chunked path: 1 MiB of float32, 2 MiB widened to float64.
# Small enough that the allocator recycles slices instead of mapping fresh pages for each.
CHUNK = 1 << 18
PreparedStream = Callable[[], Iterator[tuple[str, Prepared]]]


@dataclass(frozen=True)
class Parents:
    """One tensor of each parent, float32, same shape."""

    name: str
    direct: Tensor
    thinking: Tensor
    base: Tensor | None = None
    # The method's ``tensor_stats`` of the whole tensor, when these are slices of it.
    stats: Any = None
    # What the method's ``index`` made of these parents before (the live merger's), if any.
    index: Prepared | None = None


SliceStream = Callable[[], Iterator[Parents]]
TensorStats = Callable[[SliceStream, dict[str, Any]], Any]


@dataclass(frozen=True)
class Param:
    """A declared method parameter: what the CLI, config files and the UI build from."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str
    prepare: Callable[[Parents, dict[str, Any], int], Prepared]
    apply: Callable[[Prepared, float, dict[str, Any], Any], Tensor]
    params: tuple[Param, ...] = ()
    needs_base: bool = False
    # prepare/apply are elementwise given ``tensor_stats``: the engine may run them on slices.
    elementwise: bool = False
    tensor_stats: TensorStats | None = None
    global_stats: Callable[[PreparedStream, Iterable[float], dict[str, Any]], Any] | None = None
    # ``apply`` written straight into ``out`` (the running model's parameter: same shape,
    # contiguous, any float dtype), equal to ``apply(...).to(out.dtype)`` bit for bit: no
    # float32 result is allocated and copied over. The live merger uses it where it can.
    apply_into: Callable[[Prepared, float, dict[str, Any], Any, Tensor], None] | None = None
    # Per-tensor data that depends on the parents alone (not λ, params or seed) and that
    # ``prepare`` reuses when handed it back in ``Parents.index``: the live merger makes it
    # once per tensor, so a new parameter value re-prepares without e.g. a histogram.
    index: Callable[[Parents], Prepared] | None = None
    # True when λ=0 / λ=1 reproduce the parents exactly (used by tests and the UI).
    interpolates: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Position in what users see (CLI listing, dashboard dropdown): docs/METHODS.md's order.
    listed: int = 100


def sum_over_chunks(
    tensor_sums: Callable[[Tensor, Tensor], Tensor], slices: Iterable[tuple[Tensor, Tensor]]
) -> Tensor:
    """``tensor_sums`` of each (direct, thinking) slice, added in order, in float64."""
    total = None
    for direct, thinking in slices:
        part = tensor_sums(direct, thinking)
        total = part if total is None else total + part
    return total


def chunk_spans(numel: int) -> list[tuple[int, int]]:
    """The engine's slices of a flattened tensor: ``(start, stop)``, at least one."""
    return [(start, min(start + CHUNK, numel)) for start in range(0, max(numel, 1), CHUNK)]


def slices_of(parents: Parents) -> Iterator[Parents]:
    """The engine's slices of whole parents (flattened), ``stats`` left out."""
    whole = (parents.direct, parents.thinking, parents.base)
    flat = [t.reshape(-1) if t is not None else None for t in whole]
    for start, stop in chunk_spans(flat[0].numel()):
        yield Parents(parents.name, *(t[start:stop] if t is not None else None for t in flat))


def stats_of(tensor_stats: TensorStats, parents: Parents, params: dict[str, Any]) -> Any:
    """``parents.stats`` when the engine computed them over the slices, else the same
    statistic computed here over the same slices of the whole tensor."""
    if parents.stats is not None:
        return parents.stats
    return tensor_stats(lambda: slices_of(parents), params)
