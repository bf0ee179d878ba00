"""The λ-independent half of a live merge, kept between ``set()`` calls.

``ParentTensors`` holds the parents once, on the host, by checkpoint name (read through
``spectrum.weights.checkpoint``: the offline merge's reader, so both see the same tensors).
``PreparedMerge`` runs one method's ``prepare`` over every tensor once and keeps the
outputs where the memory plan says; ``write`` then costs one ``apply`` pass per λ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from spectrum.errors import UserError
from spectrum.live.memory import (
    DEFAULT_CHUNK_BYTES,
    MemoryPlan,
    chunked,
    disk_budget,
    host_copy,
    pinned,
    plan_memory,
)
from spectrum.methods import Parents, get_method, resolve_params
from spectrum.methods.common.base import Prepared
from spectrum.weights.checkpoint import Checkpoint, open_checkpoint
from spectrum.weights.validate import check_finite, check_merged_finite, validate_parents

log = logging.getLogger(__name__)

# A sink receives each merged tensor by checkpoint name (float32, or a parent's own
# tensor for names outside the merge scope) and writes it into the running model.
Sink = Callable[[str, Tensor], None]
# Where a merge may be written in place: the parameter behind a checkpoint name (same
# shape, contiguous, on the merge device), or None where only the sink can write it.
Target = Callable[[str], Tensor | None]
# An in-place linear writer: (name, θ_D, θ_T, λ) with the parents in their own dtype.
LinearWriter = Callable[[str, Tensor, Tensor, float], None]


@dataclass
class ParentTensors:
    """Both parents (and the optional base) on the host, by checkpoint name."""

    direct: dict[str, Tensor]
    thinking: dict[str, Tensor]
    base: dict[str, Tensor] | None
    config: dict
    direct_path: Path | None = None  # the direct parent's folder (None: built in memory)

    @classmethod
    def read(cls, direct, thinking, base=None, *, allow_pickle: bool = False) -> ParentTensors:
        checkpoints = [open_checkpoint(p, allow_pickle=allow_pickle) for p in (direct, thinking)]
        if base is not None:
            checkpoints.append(open_checkpoint(base, allow_pickle=allow_pickle))
        for warning in validate_parents(*checkpoints):
            log.warning(warning)
        roles = ("direct", "thinking", "base")
        tensors = [
            {
                name: _read_finite(ckpt, name, role)
                for name in tqdm(ckpt.names(), desc="read parent")
            }
            for role, ckpt in zip(roles, checkpoints, strict=False)
        ]
        base_tensors = tensors[2] if base is not None else None
        return cls(*tensors[:2], base_tensors, checkpoints[0].config, checkpoints[0].path)

    def merged_names(self) -> list[str]:
        """Tensors a method merges: the floating-point ones (others keep θ_D)."""
        return [name for name, t in self.direct.items() if t.is_floating_point()]

    def numel(self, name: str) -> int:
        return self.direct[name].numel()

    def dtype(self, name: str) -> torch.dtype:
        return self.direct[name].dtype

    def num_layers(self) -> int:
        return int(self.config.get("num_hidden_layers") or 1)


def _read_finite(checkpoint: Checkpoint, name: str, role: str) -> Tensor:
    tensor = checkpoint.get(name)
    check_finite(tensor, name, role)
    return pinned(tensor)


class PreparedMerge:
    """One method's prepared tensors, resident on the device or streamed from the host."""

    def __init__(
        self,
        parents: ParentTensors,
        method_name: str,
        params: dict[str, Any] | None,
        seed: int,
        device: torch.device,
        policy: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: bool = True,
        linear_writer: LinearWriter | None = None,
        disk_resident_bytes: int | None = None,
        indexes: dict[str, Prepared] | None = None,
    ):
        self.method = get_method(method_name)
        if self.method.needs_base and parents.base is None:
            raise UserError(f"method {self.method.name} needs a base model; pass base=")
        self.params = resolve_params(self.method, params)
        self.seed = seed
        self.parents = parents
        # The method's per-tensor ``index``es by name, made on first use; the caller keeps
        # them across preparations of the same method (a new parameter value reuses them).
        self.indexes = {} if indexes is None else indexes
        # None: this method's first preparation, where an index would cost more than the
        # histograms it replaces; the caller passes a dict from the second one on.
        self._indexing = self.method.index is not None and indexes is not None
        self.names = parents.merged_names()
        # linear needs no preparation: with a backend that writes it into its parameters,
        # keep the parents in their own dtype (half the bytes of float32) and skip apply.
        self.linear_writer = linear_writer if self.method.name == "linear" else None
        # The plan is estimated from the largest tensor's prepared size, before committing;
        # that tensor's preparation is then kept rather than redone (an SVD can be costly).
        largest = max(self.names, key=self.parents.numel)
        sample = self._prepare(largest, device)
        self.plan = self._plan(largest, sample, device, policy, chunk_bytes)
        if self.plan.policy == "disk":  # the host cannot spare what indexes would take
            self.indexes.clear()
            self._indexing = False
        streamed = self.plan.policy == "streamed"
        self.prepared: dict[str, dict[str, Tensor]] = {}
        # disk: keep prepared tensors on the device up to a budget; the rest are re-read.
        budget = self._disk_budget(sample, disk_resident_bytes)
        for name in tqdm(self.names, desc=f"prepare {self.method.name}", disable=not progress):
            if budget is not None:
                if self._prepared_size(sample, largest, name) > budget:
                    continue
                budget -= self._prepared_size(sample, largest, name)
            if streamed and self.linear_writer is not None:
                # linear's "prepared" tensors are the host parents: stream them, copy nothing.
                self.prepared[name] = self._linear_parents(name, torch.device("cpu"))
                continue
            prepared = sample if name == largest else self._prepare(name, device)
            self.prepared[name] = {k: host_copy(v) if streamed else v for k, v in prepared.items()}
        del sample
        self._stats: Any = None
        self._stats_scope: tuple[str, ...] | None = None  # the names _stats was computed over
        self._stats_lams: set[float] = set()  # the strengths _stats was made for

    def _prepare(
        self, name: str, device: torch.device, tensors: tuple | None = None
    ) -> dict[str, Tensor]:
        """``name``'s prepared tensors; ``tensors``: its parents already read (disk policy)."""
        if tensors is None:
            tensors = (
                self.parents.direct[name],
                self.parents.thinking[name],
                None
                if self.parents.base is None or self.linear_writer
                else self.parents.base[name],
            )
        if self.linear_writer is not None:
            return {"direct": tensors[0].to(device), "thinking": tensors[1].to(device)}

        def on_device(tensor):
            return None if tensor is None else tensor.to(device, torch.float32)

        parents = Parents(name, *(on_device(tensor) for tensor in tensors))
        if self._indexing:
            if name not in self.indexes:
                self.indexes[name] = self.method.index(parents)
            parents = replace(parents, index=self.indexes[name])
        return self.method.prepare(parents, self.params, self.seed)

    def index_bytes(self) -> int:
        """Host bytes of the method's indexes (per tensor, and its statistic's), kept beside
        the prepared tensors and never read whole by a set."""
        kept = sum(t.numel() * t.element_size() for i in self.indexes.values() for t in i.values())
        return kept + getattr(self._stats, "index_bytes", 0)

    def _linear_parents(self, name: str, device: torch.device) -> dict[str, Tensor]:
        return {
            "direct": self.parents.direct[name].to(device),
            "thinking": self.parents.thinking[name].to(device),
        }

    def _plan(
        self,
        largest: str,
        sample: dict[str, Tensor],
        device: torch.device,
        policy: str,
        chunk_bytes: int,
    ) -> MemoryPlan:
        per_element = sum(t.numel() * t.element_size() for t in sample.values())
        per_element /= self.parents.direct[largest].numel()
        total = sum(self.parents.numel(n) for n in self.names)
        return plan_memory(int(per_element * total), device, policy, chunk_bytes)

    def _prepared_size(self, sample: dict[str, Tensor], largest: str, name: str) -> int:
        per_element = sum(t.numel() * t.element_size() for t in sample.values())
        return int(per_element * self.parents.numel(name) / self.parents.numel(largest))

    def _disk_budget(self, sample: dict[str, Tensor], asked: int | None) -> int | None:
        """Prepared bytes the disk policy keeps on the device (None: not the disk policy)."""
        if self.plan.policy != "disk":
            return None
        if asked is not None:
            return asked
        # Room for the tensor in hand: its sample's size, twice (read ahead).
        reserve = 2 * sum(t.numel() * t.element_size() for t in sample.values())
        return disk_budget(self.plan.device, self.plan.free_bytes, reserve)

    def _on_device(self, names: list[str]) -> Iterator[tuple[str, dict[str, Tensor]]]:
        if self.plan.policy == "disk":
            yield from self._from_disk(names)
            return
        if self.plan.policy == "resident":
            for name in names:
                yield name, self.prepared[name]
            return
        device = self.plan.device
        for chunk in chunked(((n, self._bytes(n)) for n in names), self.plan.chunk_bytes):
            # The whole chunk is queued before use so host→device copies overlap compute.
            uploaded = {n: _upload(self.prepared[n], device) for n in chunk}
            yield from uploaded.items()

    def _from_disk(self, names: list[str]) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """Kept tensors as they are; the others read (one ahead, on a thread) and prepared."""
        missing = iter([name for name in names if name not in self.prepared])
        device = self.plan.device
        with ThreadPoolExecutor(1, thread_name_prefix="disk-read") as pool:
            ahead: dict[str, Future] = {}

            def read_next() -> None:
                name = next(missing, None)
                if name is not None:
                    ahead[name] = pool.submit(self._read, name)

            read_next()
            for name in names:
                if name in self.prepared:
                    yield name, self.prepared[name]
                    continue
                tensors = ahead.pop(name).result()
                read_next()
                yield name, self._prepare(name, device, tensors)
            for future in ahead.values():  # a generator closed early: no read left running
                future.cancel()

    def _read(self, name: str) -> tuple[Tensor, Tensor, Tensor | None]:
        base = self.parents.base
        if self.linear_writer is not None:
            base = None  # linear reads only the two parents
        return (
            self.parents.direct[name],
            self.parents.thinking[name],
            None if base is None else base[name],
        )

    def nbytes(self) -> int:
        """Bytes of prepared tensors kept between ``set()`` calls (on the device or host)."""
        return sum(self._bytes(name) for name in self.names)

    def _bytes(self, name: str) -> int:
        # Under the disk policy a name may have nothing kept: it is re-read per pass.
        return sum(t.numel() * t.element_size() for t in self.prepared.get(name, {}).values())

    def stats(self, strengths: dict[str, float | None]) -> Any:
        """The method's whole-model statistic over the in-scope tensors, kept between sets.

        Stats objects answer strengths they were not prefetched for (Top-K's threshold,
        indexed here at the first such k, then looks each new k up; EMR's rescalers do not
        depend on λ), so a λ change reuses them; a change of scope (which tensors count)
        recomputes them, as the offline merge computes them over the in-scope tensors only.
        """
        in_scope = tuple(name for name in self.names if strengths[name] is not None)
        if self.method.global_stats is None or not in_scope:
            return None
        if self._stats_scope != in_scope:
            lams = sorted({strengths[name] for name in in_scope})

            def stream():
                return self._on_device(list(in_scope))

            self._stats = self.method.global_stats(stream, lams, self.params)
            self._stats_scope = in_scope
            self._stats_lams = set(lams)
        elif (
            hasattr(self._stats, "index")
            and self.plan.policy != "disk"  # the host cannot spare what the index takes
            and not self._stats_lams.issuperset(strengths[name] for name in in_scope)
        ):
            # A strength the statistic was not made for: the slider moves. One sort now
            # makes this and every later new strength a lookup instead of a pass each.
            self._stats.index()
        return self._stats

    def merged(self, strength_for: Callable[[str], float | None]) -> Iterator[tuple[str, Tensor]]:
        """``(checkpoint name, merged float32 tensor)`` at each tensor's strength.

        Names outside the scope (strength None) yield θ_D's own tensor; non-float tensors
        are never merged, and the running model already holds θ_D's, so they are skipped.
        """
        strengths = {name: strength_for(name) for name in self.names}
        stats = self.stats(strengths)
        for name, prepared, lam in self._scoped(strengths):
            if prepared is None:
                yield name, self.parents.direct[name]
            else:
                merged = self.method.apply(prepared, lam, self.params, stats)
                # Before it reaches the model: set() then puts θ_D back and raises.
                check_merged_finite(merged, name, f"{self.method.name} · λ {lam:.2f}")
                yield name, merged

    def write(
        self,
        strength_for: Callable[[str], float | None],
        sink: Sink,
        target: Target | None = None,
    ) -> None:
        """Hand every merged tensor to ``sink``; linear goes straight to the linear writer,
        and a method with ``apply_into`` into the parameter ``target`` names (if any)."""
        if self.linear_writer is None and (target is None or self.method.apply_into is None):
            for name, tensor in self.merged(strength_for):
                sink(name, tensor)
            return
        if self.linear_writer is None:
            self._write_into(strength_for, sink, target)
            return
        strengths = {name: strength_for(name) for name in self.names}
        for name, prepared, lam in self._scoped(strengths):
            if prepared is None:
                sink(name, self.parents.direct[name])
            else:
                self.linear_writer(name, prepared["direct"], prepared["thinking"], lam)

    def _write_into(
        self, strength_for: Callable[[str], float | None], sink: Sink, target: Target
    ) -> None:
        """``write`` through the method's ``apply_into``: each merge straight into its
        parameter, then checked there (a failed check makes set() put θ_D back)."""
        strengths = {name: strength_for(name) for name in self.names}
        stats = self.stats(strengths)
        for name, prepared, lam in self._scoped(strengths):
            if prepared is None:
                sink(name, self.parents.direct[name])
                continue
            label = f"{self.method.name} · λ {lam:.2f}"
            into = target(name)
            if into is None:
                merged = self.method.apply(prepared, lam, self.params, stats)
                check_merged_finite(merged, name, label)
                sink(name, merged)
            else:
                self.method.apply_into(prepared, lam, self.params, stats, into)
                check_merged_finite(into, name, label)

    def _scoped(self, strengths: dict[str, float | None]):
        """Out-of-scope names first as ``(name, None, None)``, then ``(name, prepared, λ)``."""
        for name in self.names:
            if strengths[name] is None:
                yield name, None, None
        in_scope = [name for name in self.names if strengths[name] is not None]
        for name, prepared in self._on_device(in_scope):
            yield name, prepared, strengths[name]


def _upload(prepared: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    # copy=True even on CPU, so a forced streamed run really moves the bytes it would move.
    return {key: t.to(device, non_blocking=True, copy=True) for key, t in prepared.items()}
