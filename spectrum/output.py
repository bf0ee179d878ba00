"""Writing a merged model folder: streamed shards, side files, model card, atomic rename.

Shards are planned before the first tensor is merged (every output tensor has a parent's
shape and dtype), so each safetensors header is written up front and tensor bytes follow
one at a time: memory holds one tensor, never a shard.

The folder is built as ``.<name>.tmp-<pid>`` beside the destination and renamed into place
only when complete. ``force`` swaps a finished folder with the old one in a single
``renameat2(RENAME_EXCHANGE)`` call (Linux), so the destination is never missing or half
written. A run killed mid-way leaves its ``.tmp-<pid>`` folder; the next merge to the same
destination removes leftovers whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from spectrum.checkpoint import DTYPE_NAMES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from spectrum.errors import UserError

# Weight files and records of the parent are never copied into the merged folder.
_NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|msgpack|h5)$|.*index\.json$")
_COPIED = re.compile(r".*\.(json|jinja|txt|model|tiktoken)$")
_OWN_FILES = {"README.md", "merge_config.json"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30


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
        size = _nbytes(entry[1], entry[2])
        if shards[-1] and filled + size > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(entry)
        filled += size
    return shards


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * torch.empty((), dtype=dtype).element_size()


class ShardWriter:
    """Writes planned shards in order; ``add`` must receive tensors in plan order."""

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
        self._handle = None
        self._open_shard = -1

    def add(self, name: str, tensor: torch.Tensor) -> None:
        shard, (expected, shape, dtype) = self._order[self._position]
        if name != expected or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(f"writer expected {expected} {shape} {dtype}, got {name}")
        if shard != self._open_shard:
            self._start_shard(shard)
        if tensor.numel():
            self._handle.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().data)
        self._position += 1

    def _start_shard(self, shard: int) -> None:
        self._close_handle()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.shards[shard]:
            end = offset + _nbytes(shape, dtype)
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, end],
            }
            offset = end
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors does
        self._handle = open(self.folder / self.file_names[shard], "wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._open_shard = shard

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        if self._position != len(self._order):
            raise RuntimeError(
                f"writer closed after {self._position} of {len(self._order)} tensors"
            )
        self._close_handle()
        if len(self.shards) > 1:
            weight_map = {
                name: self.file_names[shard]
                for shard, entries in enumerate(self.shards)
                for name, _, _ in entries
            }
            total = sum(_nbytes(shape, dtype) for e in self.shards for _, shape, dtype in e)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def copy_side_files(source: Path, folder: Path) -> list[str]:
    """Config, generation config, tokenizer files and chat template of one parent."""
    copied = []
    for path in sorted(source.iterdir()):
        name = path.name
        if not path.is_file() or name in _OWN_FILES or _NOT_COPIED.fullmatch(name):
            continue
        if _COPIED.fullmatch(name):
            shutil.copyfile(path, folder / name)
            copied.append(name)
    return copied


def check_destination(out: Path, force: bool, parents: list[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    if out.exists() and not force:
        raise UserError(f"output folder {out} already exists; pass --force to replace it")
    resolved = out.resolve()
    for parent in parents:
        if resolved == parent.resolve():
            raise UserError(f"output folder {out} is one of the parents; choose another --out")
    if not out.parent.is_dir():
        raise UserError(f"cannot create {out}: folder {out.parent} does not exist")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out``, moved to ``out`` when the block completes."""
    _remove_stale(out)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
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
