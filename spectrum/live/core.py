"""What every live backend shares: the versioned merge state, the lock, ``set()``.

A backend (transformers in ``spectrum.live.hf``, vLLM in ``spectrum.live.vllm``) owns a
running model and says how a merged checkpoint tensor is written into it; this class owns
everything else. ``set()`` and generation sessions take the same lock, so a generation
runs start to finish on one version of the weights and reports that version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from spectrum.errors import UserError
from spectrum.live.memory import DEFAULT_CHUNK_BYTES, MemoryPlan, check_policy
from spectrum.live.prepared import LinearWriter, ParentTensors, PreparedMerge
from spectrum.methods import resolve_params
from spectrum.selection import MergeScope


@dataclass(frozen=True)
class LoadedMerge:
    """The merge the model currently holds; ``version`` grows by one per ``set()``."""

    method: str
    lam: float
    params: dict[str, Any] = field(default_factory=dict)
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    seed: int = 0
    version: int = 0
    set_ms: float = 0.0
    lam_schedule: tuple[float, ...] | None = None


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but torch sees no CUDA GPU")
    return device


class LiveBackend:
    """Base of the live mergers; subclasses implement ``_write`` (and load the model)."""

    def __init__(
        self,
        parents: ParentTensors,
        device: torch.device,
        policy: str,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        check_policy(policy)
        self.parents = parents
        self.device = device
        self.policy = policy
        self.chunk_bytes = chunk_bytes
        self._prepared: PreparedMerge | None = None
        self._lock = threading.Lock()
        self._session_thread: int | None = None  # the thread inside session(), if any
        # disk policy: prepared bytes kept on the device (None: what its headroom allows).
        self.disk_resident_bytes: int | None = None
        # The model starts as the direct parent, which is what λ = 0 means for every method.
        self._current = LoadedMerge(method="linear", lam=0.0)

    @property
    def current(self) -> LoadedMerge:
        return self._current

    @property
    def memory(self) -> MemoryPlan | None:
        """The memory plan of the current method (None before the first ``set()``)."""
        return None if self._prepared is None else self._prepared.plan

    @property
    def names(self) -> list[str]:
        """Checkpoint names of the tensors every ``set()`` merges and writes."""
        return self.parents.merged_names()

    @property
    def prepared_bytes(self) -> int:
        """Bytes the current method keeps prepared (0 before the first ``set()``)."""
        return 0 if self._prepared is None else self._prepared.nbytes()

    @contextmanager
    def session(self) -> Iterator[LoadedMerge]:
        """Hold the weights still for one generation; yields the merge it runs on."""
        with self._lock:
            self._session_thread = threading.get_ident()
            try:
                yield self._current
            finally:
                self._session_thread = None

    def set(
        self,
        method: str,
        lam: float,
        params: dict[str, Any] | None = None,
        *,
        layers: str | None = None,
        modules: tuple[str, ...] | list[str] | None = None,
        lam_schedule: tuple[float, ...] | list[float] | None = None,
        seed: int = 0,
    ) -> LoadedMerge:
        """Merge at strength ``lam`` into the running model, in place; waits for generations."""
        if not 0.0 <= lam <= 1.0:
            raise UserError(f"λ={lam} is outside [0, 1] (0 = direct, 1 = thinking)")
        scope = MergeScope(
            layers,
            tuple(modules) if modules is not None else None,
            tuple(lam_schedule) if lam_schedule is not None else None,
        )
        num_layers = self.parents.num_layers()
        scope.check_layers(num_layers)
        if self._session_thread == threading.get_ident():
            # The lock is not re-entrant on purpose: waiting here would wait forever.
            raise RuntimeError("set() inside this thread's own session(); leave the session first")
        with self._lock:
            start = time.perf_counter()
            prepared = self._prepared_for(method, params, seed)
            whole_model = scope == MergeScope()

            def strength_for(name: str) -> float | None:
                # The whole-model case skips the scope's regex per tensor.
                return lam if whole_model else scope.strength_for(name, lam, num_layers)

            try:
                self._write(prepared, strength_for)
            except BaseException:
                self._restore_direct(prepared)
                raise
            self._current = LoadedMerge(
                method=prepared.method.name,
                lam=float(lam),
                params=dict(prepared.params),
                layers=layers,
                modules=scope.modules,
                seed=seed,
                version=self._current.version + 1,
                set_ms=(time.perf_counter() - start) * 1e3,
                lam_schedule=scope.lam_schedule,
            )
            return self._current

    def _restore_direct(self, prepared: PreparedMerge) -> None:
        """After a failed write, put θ_D back everywhere so no mixture is ever served."""
        self._write(prepared, lambda name: None)
        self._current = LoadedMerge(method="linear", lam=0.0, version=self._current.version + 1)

    def _prepared_for(self, method: str, params: dict[str, Any] | None, seed: int) -> PreparedMerge:
        """The resident prepared tensors, re-prepared only when method, params or seed change."""
        cached = self._prepared
        if cached is not None and cached.method.name == method and cached.seed == seed:
            if resolve_params(cached.method, params) == cached.params:
                return cached
        # Free the old method's tensors before preparing the new ones.
        self._prepared = None
        self._prepared = PreparedMerge(
            self.parents,
            method,
            params,
            seed,
            self.device,
            self.policy,
            self.chunk_bytes,
            linear_writer=self._linear_writer(),
            disk_resident_bytes=self.disk_resident_bytes,
        )
        return self._prepared

    def _write(self, prepared: PreparedMerge, strength_for: Callable[[str], float | None]) -> None:
        """Write the merge into the running model (called with the lock held)."""
        raise NotImplementedError

    def _linear_writer(self) -> LinearWriter | None:
        """An in-place ``linear`` writer, when the backend has one (None: the generic path)."""
        return None
