"""Writing a merged model folder: streamed shards, side files, model card, atomic rename.

Shards are planned before the first tensor is merged (every output tensor has a parent's
shape and dtype), so each safetensors header is written up front and tensor bytes follow
one at a time: memory holds one tensor, never a shard.

Each job builds its folder in a staging folder of its own beside the destination,
``.<name>.tmp-<pid>-<random>`` (two jobs of one process never share one), and moves it
into place only when complete, with a marker (``MARKER``: every file, its size and its
sha256, hashed as it was written) written last. The move re-checks the destination: without
``force`` it is a rename that never replaces (``renameat2(RENAME_NOREPLACE)``), so a folder
that appeared meanwhile — another export's, the user's — is refused, never replaced.
``force`` replaces only a folder whose files all still match its marker — a complete
output of this tool, nothing added or edited — and never one that is, holds or lies inside
a protected path (a parent, the base, a results DB, the shipped ``assets/``), is a
symbolic link, or that a parent's files link into. It swaps the finished folder with the
old one in a single ``renameat2(RENAME_EXCHANGE)`` call (Linux), so the destination is
never missing or half written, and checks the old folder again once it is out of the way:
if it changed since the start, the swap is undone and the job refused. A run killed
mid-way leaves its staging folder; the next merge to the same destination removes
leftovers whose process is gone.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import glob
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spectrum.errors import UserError
from spectrum.weights.checkpoint import DTYPE_NAMES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from spectrum.weights.filehash import file_sha256

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
    checks it against the plan and queues its bytes; the thread writes and hashes them and
    flushes each shard to disk (``fsync``) while the merge goes on: ``digests`` then holds
    each shard's sha256 for the marker, with no second read of the output. Queued bytes
    are bounded, so a slow disk slows the merge instead of filling memory. A write error
    surfaces in the next ``add`` or in ``close``.
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
        self.digests: dict[str, str] = {}
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
                    self.digests[os.path.basename(handle.name)] = handle.digest.hexdigest()
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
        handle.write_all(struct.pack("<Q", len(encoded)) + encoded)
        return handle


class _ShardFile(io.FileIO):
    synced = 0  # bytes already handed to the disk by _start_writeback

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.digest = hashlib.sha256()

    def write_all(self, data) -> None:
        view = memoryview(data).cast("B")
        self.digest.update(view)
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
    may neither be, hold, nor lie inside, and whose files may not link into the output;
    ``SHIPPED_ASSETS`` is always protected.
    """
    if out.is_symlink():
        raise UserError(f"output path {out} is a symbolic link; name a real folder instead")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    target = out.resolve()
    for label, path in {**protected, "shipped assets folder": SHIPPED_ASSETS}.items():
        _check_apart(out, target, label, Path(path).resolve())
        _check_no_links_into(out, target, label, Path(path))
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


def _check_no_links_into(out: Path, target: Path, label: str, path: Path) -> None:
    """A parent whose files are symbolic links into ``out`` would read the new output
    through them once ``out`` is replaced: its weights silently swapped."""
    if not path.is_dir():
        return
    for entry in path.iterdir():
        if not entry.is_symlink():
            continue
        try:
            real = entry.resolve()
        except (OSError, RuntimeError):  # a link loop links nowhere
            continue
        if real.is_relative_to(target):
            raise UserError(
                f"the {label}'s file {entry} links into the output folder {out}; writing "
                "there would change that parent; choose another folder"
            )


def _check_replaceable(folder: Path, shown: Path | None = None) -> None:
    """Only a complete merge output whose every file still matches its marker (names,
    sizes and content hashes), with nothing added, may be replaced. ``shown`` is the path
    the user named, when ``folder`` has been moved aside for the check."""
    check_complete_output(folder, f"output folder {shown or folder} is not replaced: ")


def check_complete_output(folder: Path, refuse: str) -> None:
    """Refuse (``refuse`` + the reason) unless ``folder`` is a whole output of this tool
    whose every file still matches its marker, with nothing added."""
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(refuse + "it is not a folder")
    listed = _read_marker(folder)
    if listed is None:
        raise UserError(
            refuse + f"it was not written by this tool (no {MARKER} recording the content "
            "hash of every file); remove it yourself or choose another folder"
        )
    present = {entry.name: entry for entry in folder.iterdir() if entry.name != MARKER}
    extra = sorted(set(present) - set(listed))
    if extra:
        raise UserError(refuse + f"it holds files this tool did not write: {', '.join(extra[:5])}")
    for name, (size, _) in listed.items():
        entry = present.get(name)
        if entry is None or entry.is_symlink() or not entry.is_file():
            raise UserError(refuse + f"it is not a complete merge output ({name} is missing)")
        if entry.stat().st_size != size:
            raise UserError(refuse + f"{name} was changed after this tool wrote it")
    for name, (_, digest) in listed.items():  # sizes first: a mismatch costs no read
        if file_sha256(present[name]) != digest:
            raise UserError(refuse + f"{name} was changed after this tool wrote it")


def _read_marker(folder: Path) -> dict[str, tuple[int, str]] | None:
    """{file name: (bytes, sha256)} from ``folder``'s marker; None unless it is one this
    tool writes (a hand-written list of names and sizes is not)."""
    marker = folder / MARKER
    try:
        if marker.is_symlink():
            return None
        files = json.loads(marker.read_text())["files"]
        listed = {name: (entry["bytes"], entry["sha256"]) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for name, (size, digest) in listed.items():
        if (
            not isinstance(name, str)
            or name in ("", ".", "..", MARKER)
            or "/" in name
            or type(size) is not int
            or not isinstance(digest, str)
            or not re.fullmatch(r"[0-9a-f]{64}", digest)
        ):
            return None
    return listed


def write_marker(folder: Path, digests: Mapping[str, str]) -> None:
    """Record every file of a finished output — size and sha256 (``digests``: those hashed
    while written; the rest are read once here) — as the last file written."""
    files = {
        entry.name: {
            "bytes": entry.stat().st_size,
            "sha256": digests.get(entry.name) or file_sha256(entry),
        }
        for entry in sorted(folder.iterdir())
    }
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


@dataclass
class Staging:
    """One job's staging folder and the sha256 of the files hashed as they were written."""

    path: Path
    digests: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def staged_folder(out: Path, *, force: bool = False) -> Iterator[Staging]:
    """A staging folder of this job's own beside ``out``, marked and moved to ``out`` when
    the block completes; ``force`` as ``check_destination``, checked again at the move."""
    _remove_stale(out)
    staging = _new_staging(out)
    try:
        yield staging
        write_marker(staging.path, staging.digests)
        _move_into_place(staging.path, out, force)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise


def _new_staging(out: Path) -> Staging:
    # The pid lets a later job tell a dead run's leftover; the random part keeps two jobs
    # of one process (two page exports) apart. mkdir, not mkdtemp: a normal folder mode.
    while True:
        path = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return Staging(path)


def _move_into_place(staging: Path, out: Path, force: bool) -> None:
    """Rename ``staging`` to ``out``, re-checking ``out`` as it is now, not as it was."""
    if _rename_noreplace(staging, out):
        return
    if not force:
        raise UserError(
            f"output folder {out} appeared while this merge ran (another merge or export "
            "finished first, or someone made it); it was left as it is",
            cli_hint="pass --force to replace an earlier output of spectrum merge",
        )
    _exchange(staging, out)  # staging now holds what was at ``out``
    try:
        _check_replaceable(staging, shown=out)
    except UserError:
        _exchange(staging, out)  # it changed since the start: put it back untouched
        raise
    shutil.rmtree(staging)


def _remove_stale(out: Path) -> None:
    for leftover in out.parent.glob(f"{glob.escape('.' + out.name)}.tmp-*"):
        pid = leftover.name[len(f".{out.name}.tmp-") :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)) and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2(first: Path, second: Path, flags: int) -> int:
    """renameat2(2): 0, or the errno (ENOSYS where the C library lacks it)."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return errno.ENOSYS
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    paths = os.fsencode(first), os.fsencode(second)
    if function(_AT_FDCWD, paths[0], _AT_FDCWD, paths[1], flags) == 0:
        return 0
    return ctypes.get_errno()


def _rename_noreplace(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless ``target`` exists (even as an empty folder,
    which a plain rename would silently replace); False when it does."""
    error = _renameat2(source, target, _RENAME_NOREPLACE)
    if error == 0:
        return True
    if error == errno.EEXIST:
        return False
    if error not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the file system lacks the flag
        raise OSError(error, os.strerror(error), str(target))
    if os.path.lexists(target):  # elsewhere: checked, then renamed (a narrow race remains)
        return False
    os.rename(source, target)
    return True


def _exchange(first: Path, second: Path) -> None:
    """Swap two paths atomically; where renameat2 is missing, two renames back to back."""
    if _renameat2(first, second, _RENAME_EXCHANGE) == 0:
        return
    parked = second.parent / f"{second.name}.old-{os.getpid()}-{secrets.token_hex(6)}"
    os.rename(second, parked)
    os.rename(first, second)
    os.rename(parked, first)
