"""What every live backend shares: the versioned merge state, the lock, ``set()``.

A backend (transformers in ``spectrum.live.hf``, vLLM in ``spectrum.live.vllm``) owns a
running model and says how a merged checkpoint tensor is written into it; this class owns
everything else. ``set()`` and generation sessions share one readers-writer lock: any
number of sessions run together on the weights in place (two pages at the same merge never
wait for each other), ``set()`` waits until none runs and holds new ones back meanwhile, so
a generation runs start to finish on one version of the weights and reports that version.
``holding(spec)`` is "set, then generate" as one step: its session starts on exactly the
merge it set, with no other ``set()`` between (what a chat turn and a sweep cell use).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from spectrum.live.memory import DEFAULT_CHUNK_BYTES, MemoryPlan, check_policy
from spectrum.live.prepared import LinearWriter, ParentTensors, PreparedMerge
from spectrum.merge.scope import MergeScope
from spectrum.merge.spec import MergeSpec
from spectrum.methods.common.base import Prepared


@dataclass(frozen=True)
class LoadedMerge:
    """The merge the model holds now: its checked ``spec``; ``version`` grows by one per
    ``set()`` and ``set_ms`` is what that ``set()`` took."""

    spec: MergeSpec
    version: int = 0
    set_ms: float = 0.0


# What a freshly loaded model holds: the direct parent, which λ = 0 is for every method.
DIRECT = MergeSpec("linear", 0.0).checked()


class _SharedLock:
    """Many readers (generation sessions) or one writer (``set()``); a waiting writer
    holds back new readers, so a stream of chats cannot postpone a re-merge forever."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers: dict[int, int] = {}  # thread id → sessions it holds
        self._writing = False
        self._writers_waiting = 0

    def readers(self) -> dict[int, int]:
        return self._readers

    @contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            self._enter_shared(me)
        try:
            yield
        finally:
            self._leave_shared(me)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._enter_exclusive()
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()

    @contextmanager
    def shared_when(self, ready: Callable[[], bool], prepare: Callable[[], None]) -> Iterator[None]:
        """A shared hold on a state where ``ready()`` holds. When it does not, take the
        exclusive hold, ``prepare()``, and turn that hold into a shared one in one step, so
        no other writer can change the state between the preparation and its use."""
        me = threading.get_ident()
        with self._changed:
            self._enter_shared(me)
            writing = not ready()
            if writing:
                self._leave_shared_locked(me)
                if me in self._readers:  # this thread's own session: waiting never ends
                    raise RuntimeError("set() inside this thread's own session(); leave it first")
                self._enter_exclusive()
        if writing:
            prepared = False
            try:
                if not ready():  # another writer may have prepared it meanwhile
                    prepare()
                prepared = True
            finally:
                with self._changed:
                    self._writing = False
                    if prepared:  # downgraded before any waiting writer can run
                        self._readers[me] = 1
                    self._changed.notify_all()
        try:
            yield
        finally:
            self._leave_shared(me)

    def _enter_shared(self, me: int) -> None:
        # A thread already reading may nest a session: waiting would deadlock it.
        while (self._writing or self._writers_waiting) and me not in self._readers:
            self._changed.wait()
        self._readers[me] = self._readers.get(me, 0) + 1

    def _leave_shared(self, me: int) -> None:
        with self._changed:
            self._leave_shared_locked(me)

    def _leave_shared_locked(self, me: int) -> None:
        self._readers[me] -= 1
        if not self._readers[me]:
            del self._readers[me]
        self._changed.notify_all()

    def _enter_exclusive(self) -> None:
        self._writers_waiting += 1
        while self._writing or self._readers:
            self._changed.wait()
        self._writers_waiting -= 1
        self._writing = True


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
        # Per method, its per-tensor indexes (``MergeMethod.index``): kept across its
        # preparations, so a new parameter value (TIES's density) needs no histogram.
        self._indexes: dict[str, dict[str, Prepared]] = {}
        self._lock = _SharedLock()
        # disk policy: prepared bytes kept on the device (None: what its headroom allows).
        self.disk_resident_bytes: int | None = None
        # The model starts as the direct parent, which is what λ = 0 means for every method.
        self._current = LoadedMerge(DIRECT)

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

    @property
    def index_bytes(self) -> int:
        """Host bytes of the current method's indexes (a new k or density looks up there)."""
        return 0 if self._prepared is None else self._prepared.index_bytes()

    @contextmanager
    def session(self) -> Iterator[LoadedMerge]:
        """Hold the weights still for one generation; yields the merge it runs on.
        Sessions of several threads run at once; ``set()`` waits for all of them."""
        with self._lock.shared():
            yield self._current

    @contextmanager
    def holding(self, spec: MergeSpec) -> Iterator[LoadedMerge]:
        """``set(spec)`` unless loaded, then a session on it, as one step: no other
        ``set()`` lands between, so what runs inside generates on ``spec`` (yielded)."""
        spec = self._checked(spec)
        with self._lock.shared_when(
            lambda: self._current.spec == spec, lambda: self._set_locked(spec)
        ):
            yield self._current

    def set(self, spec: MergeSpec) -> LoadedMerge:
        """Merge ``spec`` into the running model, in place; waits for generations.

        The spec is checked against this pair first; ``current.spec`` is then exactly the
        checked spec, so ``merger.current.spec == spec.checked(...)`` says what is loaded.
        """
        spec = self._checked(spec)
        if threading.get_ident() in self._lock.readers():
            # Waiting for this thread's own session to end would wait forever.
            raise RuntimeError("set() inside this thread's own session(); leave the session first")
        with self._lock.exclusive():
            return self._set_locked(spec)

    def _checked(self, spec: MergeSpec) -> MergeSpec:
        has_base = self.parents.base is not None
        return spec.checked(has_base=has_base, num_layers=self.parents.num_layers())

    def _set_locked(self, spec: MergeSpec) -> LoadedMerge:
        """Write the checked ``spec`` into the model (the exclusive hold is taken)."""
        start = time.perf_counter()
        prepared = self._prepared_for(spec)
        scope, whole_model = spec.scope, spec.scope == MergeScope()
        num_layers = self.parents.num_layers()

        def strength_for(name: str) -> float | None:
            # The whole-model case skips the scope's regex per tensor.
            return spec.lam if whole_model else scope.strength_for(name, spec.lam, num_layers)

        try:
            self._write(prepared, strength_for)
        except BaseException:
            self._restore_direct(prepared)
            raise
        self._current = LoadedMerge(
            spec, self._current.version + 1, (time.perf_counter() - start) * 1e3
        )
        return self._current

    def _restore_direct(self, prepared: PreparedMerge) -> None:
        """After a failed write, put θ_D back everywhere so no mixture is ever served."""
        self._write(prepared, lambda name: None)
        self._current = LoadedMerge(DIRECT, self._current.version + 1)

    def _prepared_for(self, spec: MergeSpec) -> PreparedMerge:
        """The resident prepared tensors, re-prepared only when method, params or seed change."""
        cached = self._prepared
        if cached is not None and (cached.method.name, cached.params, cached.seed) == (
            spec.method,
            dict(spec.params),
            spec.seed,
        ):
            return cached
        indexes = self._indexes_for(spec.method)  # (asks what was prepared last)
        # Free the old method's tensors before preparing the new ones.
        self._prepared = None
        self._prepared = PreparedMerge(
            self.parents,
            spec.method,
            dict(spec.params),
            spec.seed,
            self.device,
            self.policy,
            self.chunk_bytes,
            linear_writer=self._linear_writer(),
            disk_resident_bytes=self.disk_resident_bytes,
            indexes=indexes,
        )
        return self._prepared

    def _indexes_for(self, method: str) -> dict[str, Prepared] | None:
        """``method``'s kept indexes, from its second preparation in a row on (a first one
        gets None: no index, which would cost more than it saves if nothing else follows);
        another method's are dropped (host memory)."""
        again = self._prepared is not None and self._prepared.method.name == method
        self._indexes = {method: self._indexes.get(method, {})} if again else {}
        return self._indexes.get(method)

    def _write(self, prepared: PreparedMerge, strength_for: Callable[[str], float | None]) -> None:
        """Write the merge into the running model (called with the lock held)."""
        raise NotImplementedError

    def _linear_writer(self) -> LinearWriter | None:
        """An in-place ``linear`` writer, when the backend has one (None: the generic path)."""
        return None
