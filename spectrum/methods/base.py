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
threshold that depends on k = λ can be computed exactly for each.

All tensors handed to a method are float32 on the merge device; casting back to the
parents' dtype is the engine's job. λ convention (shared/reference/methods.md):
λ = 0 gives the direct parent, λ = 1 the thinking parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

Prepared = dict[str, Tensor]
PreparedStream = Callable[[], Iterator[tuple[str, Prepared]]]


@dataclass(frozen=True)
class Parents:
    """One tensor of each parent, float32, same shape."""

    name: str
    direct: Tensor
    thinking: Tensor
    base: Tensor | None = None


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
    global_stats: Callable[[PreparedStream, Iterable[float], dict[str, Any]], Any] | None = None
    # True when λ=0 / λ=1 reproduce the parents exactly (used by tests and the UI).
    interpolates: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)
