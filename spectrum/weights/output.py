"""Writing a merged model folder: streamed shards, side files, model card, atomic rename.

Shards are planned before the first tensor is merged (every output tensor has a parent's
shape and dtype), so each safetensors header is written up front and tensor bytes follow
one at a time: memory holds one tensor, never a shard.

The folder is built as ``.<name>.tmp-<pid>`` beside the destination and renamed into place
only when complete, with a marker (``MARKER``: every file and its size) written last.
``force`` replaces only a folder that marker describes exactly — a complete output of this
tool, nothing added — and never one that is, holds or lies inside a protected path (a
parent, the base, a results DB, the shipped ``assets/``). It swaps the finished folder with
the old one in a single ``renameat2(RENAME_EXCHANGE)`` call (Linux), so the destination is
never missing or half written. A run killed mid-way leaves its ``.tmp-<pid>`` folder; the
next merge to the same destination removes leftovers whose process is gone.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from spectrum.errors import UserError
from spectrum.weights.checkpoint import DTYPE_NAMES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE

# Weight files and records of the parent are never copied into the merged folder.
_NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|msgpack|h5)$|.*index\.json$")
_COPIED = re.compile(r".*\.(json|jinja|txt|model|tiktoken)$")
MARKER = ".spectrum-merge.json"  # what makes a folder one this tool may replace
_OWN_FILES = {"README.md", "merge_config.json", MARKER}
# Shipped with the project (the embedded pair, the shipped results DB): never a target.
SHIPPED_ASSETS = Path(__file__).resolve().parents[2] / "assets"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30
QUEUED_BYTES = 16 << 20  # written bytes the merge may run ahead of the disk
WRITEBACK_BYTES = 32 << 20  # start the disk on each such stretch of a shard


def parse_size(size: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count → bytes (Hugging Face units)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).upper() not in _UNITS or float(match.group(1)) <= 0:
        raise UserError(f"bad shard size {size!r}; write e.g. 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def plan_shards(
    entries: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Greedy: fill a shard in order until the next tensor would pass the limit."""
    shards: list[list] = [[]]
    filled = 0
    for entry in entries:
        size = tensor_nbytes(entry[1], entry[2])
        if shards[-1] and filled + size > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(entry)
        filled += size
    return shards


def tensor_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * torch.empty((), dtype=dtype).element_size()


class ShardWriter:
    """Writes planned shards in order, from a background thread.

    ``add`` takes each tensor in plan order, whole or as consecutive flat pieces of it,
    checks it against the plan and queues its bytes; the thread writes them and flushes
    each shard to disk (``fsync``) while the merge goes on. Queued bytes are bounded, so
    a slow disk slows the merge instead of filling memory. A write error surfaces in the
    next ``add`` or in ``close``.
    """

    def __init__(self, folder: Path, shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]]):
        self.folder = folder
        self.shards = shards
        count = len(shards)
        self.file_names = (
            [SAFETENSORS_SINGLE]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._order = [(shard, entry) for shard, entries in enumerate(shards) for entry in entries]
        self._position = 0
        self._filled = 0  # bytes of the current tensor queued so far
        self._open_shard = -1
        self._queue = _ByteQueue(QUEUED_BYTES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="spectrum-write", daemon=True)
        self._thread.start()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor``: the whole of ``name`` or its next flat piece."""
        self._raise_error()
        if self._position >= len(self._order):
            raise RuntimeError(f"writer got {name} after the last planned tensor")
        shard, (expected, shape, dtype) = self._order[self._position]
        size = tensor_nbytes(shape, dtype)
        piece = tensor.numel() * tensor.element_size()
        if name != expected or tensor.dtype != dtype or self._filled + piece > size:
            raise RuntimeError(f"writer expected {expected} {shape} {dtype}, got {name}")
        if tensor.dim() > 1 and tuple(tensor.shape) != shape:  # whole, so shaped
            raise RuntimeError(f"writer expected {expected} {shape}, got {tuple(tensor.shape)}")
        if shard != self._open_shard:
            self._queue.put(("shard", shard), 0)
            self._open_shard = shard
        if piece:
            self._queue.put(("bytes", tensor.contiguous().view(-1).view(torch.uint8)), piece)
        self._filled += piece
        if self._filled == size:
            self._position += 1
            self._filled = 0

    def close(self) -> None:
        """Wait for every byte to reach disk, then write the index."""
        self._queue.put(("end", None), 0)
        self._thread.join()
        self._raise_error()
        if self._position != len(self._order):
            raise RuntimeError(
                f"writer closed after {self._position} of {len(self._order)} tensors"
            )
        if len(self.shards) > 1:
            weight_map = {
                name: self.file_names[shard]
                for shard, entries in enumerate(self.shards)
                for name, _, _ in entries
            }
            total = sum(tensor_nbytes(shape, dtype) for e in self.shards for _, shape, dtype in e)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / SAFETENSORS_INDEX).write_text(
                json.dumps(index, indent=2, allow_nan=False) + "\n"
            )

    def abort(self) -> None:
        """Stop writing (the merge failed): drop queued bytes, close the open shard."""
        self._queue.fail()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        handle = None
        try:
            while True:
                kind, item = self._queue.get()
                if kind == "abort":
                    return
                if kind == "bytes":
                    handle.write_all(item.numpy().data)
                    if handle.tell() - handle.synced >= WRITEBACK_BYTES:
                        _start_writeback(handle)
                    continue
                if handle is not None:
                    _flush(handle)
                    handle = None
                if kind == "end":
                    return
                handle = self._open(item)
        except BaseException as error:  # re-raised in the merging thread
            self._error = error
            self._queue.fail()
        finally:
            if handle is not None:
                handle.close()

    def _open(self, shard: int):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.shards[shard]:
            end = offset + tensor_nbytes(shape, dtype)
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, end],
            }
            offset = end
        encoded = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors does
        handle = _ShardFile(self.folder / self.file_names[shard], "wb")
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        return handle


class _ShardFile(io.FileIO):
    synced = 0  # bytes already handed to the disk by _start_writeback

    def write_all(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:  # an unbuffered write(2) may take less, and takes at most ~2 GiB
            view = view[self.write(view) :]


def _start_writeback(handle: _ShardFile) -> None:
    """Have the kernel start writing what we wrote so far, without waiting for it.

    Left alone, Linux keeps gigabytes dirty and the closing fsync writes them all while
    the merge waits; started early, the disk works beside the merge and fsync finds little
    left. sync_file_range is Linux's; elsewhere the fsync does all the work.
    """
    end = handle.tell()
    if _sync_file_range is not None:
        _sync_file_range(handle.fileno(), handle.synced, end - handle.synced, 2)  # WRITE
    handle.synced = end


def _load_sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _load_sync_file_range()


def _flush(handle) -> None:
    os.fsync(handle.fileno())
    handle.close()


class _ByteQueue:
    """A FIFO that blocks ``put`` while more than ``limit`` bytes wait (one item may pass)."""

    def __init__(self, limit: int):
        self._limit = limit
        self._items: collections.deque = collections.deque()
        self._waiting = 0
        self._failed = False
        self._ready = threading.Condition()

    def put(self, item, size: int) -> None:
        with self._ready:
            while self._waiting and self._waiting + size > self._limit and not self._failed:
                self._ready.wait()
            if self._failed:  # the writer stopped: nothing drains, the error is re-raised
                return
            self._items.append((item, size))
            self._waiting += size
            self._ready.notify_all()

    def get(self):
        with self._ready:
            while not self._items and not self._failed:
                self._ready.wait()
            if self._failed:
                return ("abort", None)
            item, size = self._items.popleft()
            self._waiting -= size
            self._ready.notify_all()
            return item

    def fail(self) -> None:
        with self._ready:
            self._failed = True
            self._items.clear()
            self._ready.notify_all()


def side_files(source: Path) -> list[Path]:
    """Config, generation config, tokenizer files and chat template of one parent."""
    return [
        path
        for path in sorted(source.iterdir())
        if path.is_file()
        and path.name not in _OWN_FILES
        and not _NOT_COPIED.fullmatch(path.name)
        and _COPIED.fullmatch(path.name)
    ]


def copy_side_files(source: Path, folder: Path) -> list[str]:
    """Copy ``side_files(source)`` into ``folder``; return their names."""
    copied = []
    for path in side_files(source):
        shutil.copyfile(path, folder / path.name)
        copied.append(path.name)
    return copied


def check_destination(out: Path, force: bool, protected: Mapping[str, Path]) -> None:
    """Refuse, before any work, an output folder this merge must not write or replace.

    ``protected`` maps a label ("direct parent", "results database") to a path the output
    may neither be, hold, nor lie inside; ``SHIPPED_ASSETS`` is always protected.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    target = out.resolve()
    for label, path in {**protected, "shipped assets folder": SHIPPED_ASSETS}.items():
        _check_apart(out, target, label, Path(path).resolve())
    if out.exists() and not force:
        raise UserError(
            f"output folder {out} already exists", cli_hint="pass --force to replace it"
        )
    if out.exists():
        _check_replaceable(out)
    if not out.parent.is_dir():
        raise UserError(f"cannot create {out}: folder {out.parent} does not exist")


def _check_apart(out: Path, target: Path, label: str, path: Path) -> None:
    if target == path:
        raise UserError(f"output folder {out} is the {label}; choose another folder")
    if path.is_relative_to(target):
        raise UserError(f"output folder {out} contains the {label} {path}; choose another folder")
    if target.is_relative_to(path):
        raise UserError(
            f"output folder {out} lies inside the {label} {path}; choose another folder"
        )


def _check_replaceable(out: Path) -> None:
    """Only a complete merge output, with nothing added since, may be replaced."""
    refuse = f"output folder {out} is not replaced: "
    try:
        listed = json.loads((out / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            refuse + f"it was not written by this tool (no readable {MARKER}); "
            "remove it yourself or choose another folder"
        ) from None
    present = {entry.name: entry for entry in out.iterdir() if entry.name != MARKER}
    extra = sorted(set(present) - set(listed))
    if extra:
        raise UserError(refuse + f"it holds files this tool did not write: {', '.join(extra[:5])}")
    for name, size in listed.items():
        entry = present.get(name)
        if (
            entry is None
            or entry.is_symlink()
            or not entry.is_file()
            or entry.stat().st_size != size
        ):
            raise UserError(refuse + f"it is not a complete merge output ({name} differs)")


def write_marker(folder: Path) -> None:
    """Record every file of a finished output (names and sizes): the last file written."""
    files = {entry.name: entry.stat().st_size for entry in sorted(folder.iterdir())}
    (folder / MARKER).write_text(
        json.dumps({"tool": "thinking-spectrum", "files": files}, allow_nan=False) + "\n"
    )


def check_free_space(out: Path, nbytes: int) -> None:
    """Refuse before writing when the output's folder cannot hold ``nbytes`` more."""
    free = shutil.disk_usage(out.parent).free
    if free < nbytes:
        raise UserError(
            f"not enough free space for {out}: the merge writes {nbytes / 1e6:.1f} MB, "
            f"{out.parent} has {free / 1e6:.1f} MB free"
        )


def os_error_message(error: OSError, out: Path) -> str:
    """One line for a failed write: the path and the system's reason (read-only, full...)."""
    where = f" ({error.filename})" if error.filename else ""
    return f"cannot write {out}: {error.strerror or error}{where}"


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out``, marked and moved to ``out`` when the block completes."""
    _remove_stale(out)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        write_marker(staging)
        if out.exists():
            _exchange(staging, out)  # staging now holds the old folder
            shutil.rmtree(staging)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove_stale(out: Path) -> None:
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(first: Path, second: Path) -> None:
    """Swap two paths atomically; where renameat2 is missing, two renames back to back."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, bytes(first), at_fdcwd, bytes(second), rename_exchange) == 0:
            return
    parked = second.parent / f"{second.name}.old-{os.getpid()}"
    os.rename(second, parked)
    os.rename(first, second)
    os.rename(parked, first)
