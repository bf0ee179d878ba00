"""Sweeps on a Ray cluster: the driver plans and writes, a pool of actors generates.

Protocol. The driver (``Sweeper`` with a ``RayPool``) plans the missing cells exactly as a
single-process sweep's per-λ path does (``sweep.cells_of``; its one-batch λ decode of
affine methods stays single-process) and hands them to ``RayPool.run``. Each
actor loads the parents once (a live merger, transformers or vLLM) and runs one cell per
call with ``sweep.run_cell``, the single-process code, returning the cell's graded rows.
Only the driver writes DuckDB, one transaction per cell, as rows come back.

Order. Cells are queued per merge method; an actor keeps taking cells of the method it
last served (a λ change re-applies the prepared tensors, a method change re-prepares
them) and otherwise joins the method with the most cells left per actor already on it.

Failures. An actor that dies (killed, out of memory, node lost) has its in-flight cells
put back at the front of their queues and is replaced, so every cell is written exactly
once. A driver that dies loses only uncommitted cells: rerun, and planning from the DB
finds the same cells with the same seeds (see ``cells_of``). An exception *inside* a
cell is a bug or bad input and stops the sweep, as it would in one process.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pandas as pd

from spectrum.errors import UserError
from spectrum.eval.sweep import Cell, SweepSpec, default_provider, run_cell

DEPTH = 2  # cells queued per actor: the next one is ready while the driver writes
LOCAL_OBJECT_STORE = 256 * 2**20  # rows only travel through it; Ray's default is 30 % of RAM


class Worker:
    """One Ray actor: the parents loaded once, then cells on demand."""

    def __init__(self, spec: SweepSpec, threads: int) -> None:
        import torch

        # A fair share of the node's cores, so N workers do not fight over all of them.
        torch.set_num_threads(threads)
        self.provider = default_provider(spec)

    def ready(self) -> int:
        return os.getpid()

    def run(self, spec: SweepSpec, cell: Cell, run_id: str) -> pd.DataFrame:
        from spectrum.generate.batch import generator_for

        generator = generator_for(self.provider, batch_size=spec.batch_size)
        return run_cell(self.provider, generator, spec, cell, run_id)


def _ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError("--ray needs the ray package: pip install 'ray>=2.40'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's long retries, when HOST:PORT does not answer."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray {address!r}: expected local, auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"--ray {address}: no Ray cluster answers there ({error})") from None


def connect(address: str) -> None:
    """Join (or, for ``local``, start) the Ray cluster at ``address``."""
    ray = _ray()
    if ray.is_initialized():
        return
    # Workers import this package: an installed one, or the driver's PYTHONPATH (a checkout).
    env = {k: os.environ[k] for k in ("PYTHONPATH", "SPECTRUM_CACHE") if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if address == "local":
        ray.init(
            num_cpus=len(os.sched_getaffinity(0)),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            runtime_env=runtime_env,
        )
        return
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, runtime_env=runtime_env)
    except ConnectionError as error:
        raise UserError(f"--ray {address}: {str(error).splitlines()[0]}") from None


class RayPool:
    """Ray actors that run sweep cells; made on the first ``run`` and kept for later ones
    (``spectrum search`` runs a round at a time through the same actors)."""

    def __init__(
        self,
        address: str,
        *,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        threads: int | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise UserError("--workers must be at least 1")
        if gpus_per_worker < 0:
            raise UserError("--gpus-per-worker must not be negative")
        connect(address)
        self.ray = _ray()
        self.workers, self.gpus_per_worker = self._sizes(workers, gpus_per_worker)
        self.threads = threads or self._threads()
        self.actors: list[Any] = []
        self._parents: tuple | None = None
        self.deaths = 0

    def _sizes(self, workers: int | None, gpus: float) -> tuple[int, float]:
        """Workers = the cluster's GPUs (one each unless told), else ``workers`` CPU ones."""
        cluster_gpus = self.ray.cluster_resources().get("GPU", 0)
        if cluster_gpus and not gpus:
            gpus = 1.0
        if workers is None:
            workers = max(1, int(cluster_gpus // gpus)) if gpus else 1
        return workers, gpus

    def _threads(self) -> int:
        """Each worker's torch threads: its share of the cores, capped by the largest node."""
        nodes = [n for n in self.ray.nodes() if n["Alive"]]
        largest = max(int(n["Resources"].get("CPU", 1)) for n in nodes)
        total = int(self.ray.cluster_resources().get("CPU", 1))
        return max(1, min(total // self.workers, largest))

    def _start(self, spec: SweepSpec) -> Any:
        actor = self.ray.remote(Worker).options(
            num_cpus=self.threads, num_gpus=self.gpus_per_worker, max_restarts=0
        )
        return actor.remote(spec, self.threads)

    def start(self, spec: SweepSpec) -> None:
        """Start the actors for ``spec``'s parents (kept while the parents stay the same)."""
        parents = (spec.direct, spec.thinking, spec.base, spec.backend)
        if self._parents == parents:
            return
        self.close()
        self.actors = [self._start(spec) for _ in range(self.workers)]
        self._parents = parents
        try:  # a bad model path fails here, once, rather than as a worker death per cell
            self.ray.get([actor.ready.remote() for actor in self.actors])
        except self.ray.exceptions.RayActorError as error:
            self.close()
            raise UserError(f"a Ray worker could not load the parents: {error}") from None

    def run(self, spec: SweepSpec, cells: list[Cell], run_id: str) -> Iterator[tuple[Cell, Any]]:
        """Yield (cell, rows) as the actors finish them, every cell exactly once."""
        self.start(spec)
        queues = _Queues(cells)
        inflight: dict[Any, tuple[int, Any, Cell]] = {}  # object ref → (slot, actor, cell)
        methods: dict[int, str | None] = {slot: None for slot in range(len(self.actors))}
        while queues or inflight:
            self._feed(spec, run_id, queues, inflight, methods)
            [ref], _ = self.ray.wait(list(inflight), num_returns=1)
            slot, actor, cell = inflight.pop(ref)
            try:
                rows = self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                queues.put_back(cell)
                if self.actors[slot] is actor:  # its other cells fail too: replace it once
                    self._replace(spec, slot)
                    methods[slot] = None
                continue
            yield cell, rows

    def _feed(self, spec, run_id, queues, inflight, methods) -> None:
        busy = [0] * len(self.actors)
        for slot, _, _ in inflight.values():
            busy[slot] += 1
        for slot, actor in enumerate(self.actors):
            for _ in range(DEPTH - busy[slot]):
                if not queues:
                    return
                cell = queues.take(methods[slot], methods)
                methods[slot] = cell.config["method"]
                inflight[actor.run.remote(spec, cell, run_id)] = (slot, actor, cell)

    def _replace(self, spec: SweepSpec, slot: int) -> None:
        self.deaths += 1
        if self.deaths > 3 * self.workers:
            raise UserError(f"Ray workers died {self.deaths} times; see the Ray logs")
        self.actors[slot] = self._start(spec)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors, self._parents = [], None


class _Queues:
    """Cells waiting, one queue per method, in plan order (λ, then benchmark)."""

    def __init__(self, cells: list[Cell]) -> None:
        self.by_method: dict[str, deque[Cell]] = {}
        for cell in cells:
            self.by_method.setdefault(cell.config["method"], deque()).append(cell)

    def __bool__(self) -> bool:
        return any(self.by_method.values())

    def take(self, method: str | None, serving: dict[int, str | None]) -> Cell:
        if not self.by_method.get(method):
            method = max(
                (m for m, queue in self.by_method.items() if queue),
                key=lambda m: len(self.by_method[m]) / (1 + list(serving.values()).count(m)),
            )
        return self.by_method[method].popleft()

    def put_back(self, cell: Cell) -> None:
        self.by_method.setdefault(cell.config["method"], deque()).appendleft(cell)
