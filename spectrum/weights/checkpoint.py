"""Open a model checkpoint lazily: a local Hugging Face folder or a hub id.

A ``Checkpoint`` knows every tensor's name, shape and dtype from the safetensors headers
alone, and reads one tensor at a time on ``get``. Reads are positioned file reads straight
into a fresh tensor rather than a long-lived ``mmap``: pages of a mapped file count towards
the process's RSS for as long as the mapping lives, so streaming a 60 GB model through a
mapping would look (and, under memory pressure, behave) like holding it. Either way the OS
page cache serves the bytes and nothing but the tensor in hand is resident.

Pickle ``.bin``/``.pt``/``.pth`` checkpoints can execute code when loaded; unless the caller
passes ``allow_pickle=True`` they are refused from their file names alone, before a byte is
read. Allowed, each file is loaded once, with ``weights_only=True`` and ``mmap=True``.

A quantized checkpoint (block-scaled FP8, MXFP4: ``spectrum.weights.quantized``) shows the
tensors transformers dequantizes it to, by the names the model uses: ``get`` gives their
exact float32 values, ``dtype`` the bfloat16 they are held and written in. Any other
``quantization_config`` is refused when the checkpoint is opened, before a weight is read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
from pathlib import Path

import torch

from spectrum.errors import UserError
from spectrum.weights.filehash import file_sha256
from spectrum.weights.quantized import DTYPE as DEQUANTIZED_DTYPE
from spectrum.weights.quantized import Dequantized, RawReader, quantization_of

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

# Files a snapshot download needs: weights, configs, tokenizer, chat template.
HUB_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
if hasattr(torch, "float8_e8m0fnu"):  # torch >= 2.7: block scales of some FP8 checkpoints
    DTYPES["F8_E8M0"] = torch.float8_e8m0fnu
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound on a header


class _SafetensorsFile:
    """The header of one safetensors file, checked as the safetensors library checks it
    (``_check_layout``) before a tensor byte is read."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise UserError(f"corrupt safetensors file {path}: shorter than its header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise UserError(f"corrupt safetensors file {path}: header runs past the end")
            try:
                header = json.loads(handle.read(header_len), object_pairs_hook=_unique_keys)
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
                reason = str(error).splitlines()[0]
                raise UserError(
                    f"corrupt safetensors file {path}: unreadable header ({reason})"
                ) from None
        if not isinstance(header, dict):
            raise UserError(f"corrupt safetensors file {path}: the header is not a JSON object")
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        self.tensors: dict[str, dict] = {
            name: _checked_entry(path, name, entry) for name, entry in header.items()
        }
        _check_layout(path, self.tensors, size - self.data_start)

    def read(self, name: str, span: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor ``name``, or elements ``span = (start, stop)`` of it, flattened."""
        entry = self.tensors[name]
        dtype = DTYPES[entry["dtype"]]
        start, end = entry["data_offsets"]
        if span is None:
            out = torch.empty(entry["shape"], dtype=dtype)
        else:
            if not 0 <= span[0] <= span[1] <= math.prod(entry["shape"]):
                raise ValueError(f"elements {span} are outside {name} {entry['shape']}")
            out = torch.empty(span[1] - span[0], dtype=dtype)
            start, end = start + span[0] * out.element_size(), start + span[1] * out.element_size()
        buffer = memoryview(out.view(-1).view(torch.uint8).numpy() if out.numel() else b"")
        done, size = 0, end - start
        with open(self.path, "rb", buffering=0) as handle:
            while done < size:  # one read(2) returns at most ~2 GiB
                got = os.preadv(handle.fileno(), [buffer[done:]], self.data_start + start + done)
                if got == 0:
                    raise UserError(f"truncated safetensors file {self.path} while reading {name}")
                done += got
        return out


class Checkpoint:
    """A model folder: its config and lazily read tensors (see the module docstring)."""

    def __init__(self, path: Path, *, allow_pickle: bool = False, source: str | None = None):
        self.path = path
        self.source = source or str(path)
        self.config: dict = _read_json(path / "config.json", required=True)
        self.quantization = quantization_of(self.config, self.source)  # refused before reads
        self._files: dict[str, _SafetensorsFile] = {}
        self._pickle_files: dict[str, Path] = {}
        # Each pickle file loaded once (memory-mapped, so kept mappings cost no memory);
        # the lock keeps the merge's reader threads from loading one file twice.
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        self._pickle_lock = threading.Lock()
        self._where: dict[str, str] = {}
        self._load_layout(allow_pickle)
        if self.config.get("tie_word_embeddings") and "model.embed_tokens.weight" in self._where:
            # A tied head is the embedding itself; some savers store a copy, some do not.
            # Dropping it here makes both layouts compare equal and merge the same way.
            self._where.pop("lm_head.weight", None)
        self._dequantized: Dequantized | None = None
        self._names = list(self._where)
        if self.quantization is not None:
            raw = RawReader(self._raw_shape, self._raw_dtype, self._raw_get, self._raw_get_slice)
            self._dequantized = Dequantized(
                self.quantization, self.config, self._names, raw, self.source
            )
            self._names = self._dequantized.names(self._names)

    def _load_layout(self, allow_pickle: bool) -> None:
        weight_map = self._weight_map(SAFETENSORS_INDEX, SAFETENSORS_SINGLE)
        if weight_map is not None:
            for file in sorted(set(weight_map.values())):
                if not (self.path / file).is_file():
                    raise UserError(f"{self.path}: shard {file} named in the index is missing")
                self._files[file] = _SafetensorsFile(self.path / file)
            for name, file in weight_map.items():
                if name not in self._files[file].tensors:
                    raise UserError(f"{self.path}: tensor {name} is not in {file} as indexed")
            # Order: file by file, then by position, so a pass over names reads sequentially.
            self._where = {
                name: file
                for file, shard in self._files.items()
                for name in sorted(shard.tensors, key=lambda n: shard.tensors[n]["data_offsets"])
                if weight_map.get(name) == file
            }
            return
        pickled = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled and not allow_pickle:
            # Decided from the names: torch.load must not touch a file we may refuse.
            raise UserError(
                f"{self.path} holds pickle weights ({pickled[0]}), which can run code when "
                "loaded; convert them to safetensors",
                cli_hint="or pass --allow-pickle",
            )
        pickle_map = self._weight_map(PICKLE_INDEX, PICKLE_SINGLE)
        if pickle_map is None:
            raise UserError(f"{self.path}: no model.safetensors(.index.json) or pytorch_model.bin")
        self._pickle_files = {file: self.path / file for file in sorted(set(pickle_map.values()))}
        self._where = dict(pickle_map)

    def _weight_map(self, index_name: str, single_name: str) -> dict[str, str] | None:
        if (self.path / index_name).is_file():
            index = _read_json(self.path / index_name, required=True)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(file, str) and file == Path(file).name and file not in ("", ".", "..")
                for file in weight_map.values()
            ):
                raise UserError(
                    f"{self.path / index_name}: no weight_map of tensor names to file names "
                    "in this folder"
                )
            return index["weight_map"]
        if (self.path / single_name).is_file():
            if single_name.endswith(".safetensors"):
                names = _SafetensorsFile(self.path / single_name).tensors
            else:  # loaded once: the names now, the tensors from the same dict later
                names = self._pickle_dict(self.path / single_name)
            return dict.fromkeys(names, single_name)
        return None

    def names(self) -> list[str]:
        return list(self._names)

    def _logical(self, name: str) -> bool:
        return self._dequantized is not None and name in self._dequantized.recipes

    def shape(self, name: str) -> tuple[int, ...]:
        if self._logical(name):
            return self._dequantized.shape(name)
        return self._raw_shape(name)

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's dtype (a dequantized one's: the bfloat16 it is held in)."""
        return DEQUANTIZED_DTYPE if self._logical(name) else self._raw_dtype(name)

    def get(self, name: str) -> torch.Tensor:
        """The tensor (a dequantized one: its exact float32 values)."""
        return self._dequantized.get(name) if self._logical(name) else self._raw_get(name)

    def get_slice(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``start:stop`` of the flattened tensor, reading only those bytes."""
        if self._logical(name):
            return self._dequantized.get_slice(name, start, stop)
        return self._raw_get_slice(name, start, stop)

    def _raw_shape(self, name: str) -> tuple[int, ...]:
        if self._pickle_files:
            return tuple(self._raw_get(name).shape)
        return tuple(self._files[self._where[name]].tensors[name]["shape"])

    def _raw_dtype(self, name: str) -> torch.dtype:
        if self._pickle_files:
            return self._raw_get(name).dtype
        return DTYPES[self._files[self._where[name]].tensors[name]["dtype"]]

    def _raw_get(self, name: str) -> torch.Tensor:
        file = self._where[name]
        if file in self._files:
            return self._files[file].read(name)
        return self._pickle_tensor(file, name)

    def _raw_get_slice(self, name: str, start: int, stop: int) -> torch.Tensor:
        file = self._where[name]
        if file in self._files:
            return self._files[file].read(name, (start, stop))
        return self._pickle_tensor(file, name).reshape(-1)[start:stop]

    def _pickle_tensor(self, file: str, name: str) -> torch.Tensor:
        return self._pickle_dict(self._pickle_files[file])[name]

    def _pickle_dict(self, path: Path) -> dict[str, torch.Tensor]:
        with self._pickle_lock:
            if path not in self._pickled:
                self._pickled[path] = self._load_pickle(path)
            return self._pickled[path]

    def _load_pickle(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch raises many kinds for a bad file
            raise UserError(f"cannot read pickle checkpoint {path}: {error}") from None

    def weight_files(self) -> list[Path]:
        return [self.path / file for file in (*self._files, *self._pickle_files)]

    def content_hash(self) -> str:
        """sha256 over each weight file's name and sha256, plus config.json.

        Full-content hashing is the only cheap-to-explain hash that tells a fine-tune from
        its base (two same-shaped models have byte-identical safetensors headers). Files in a
        Hugging Face cache are stored under their sha256 already, so those cost nothing;
        other files' digests are remembered while they are unchanged
        (``spectrum.weights.filehash``).
        """
        outer = hashlib.sha256()
        for path in [*self.weight_files(), self.path / "config.json"]:
            outer.update(f"{path.name}\0{_file_sha256(path)}\n".encode())
        return outer.hexdigest()


def refuse_quantized(checkpoint: Checkpoint, what: str) -> None:
    """One line naming a quantized ``checkpoint`` that ``what`` cannot serve."""
    if checkpoint.quantization is not None:
        raise UserError(
            f"{checkpoint.source} is {checkpoint.quantization}-quantized and {what} does not "
            "dequantize it; merge it with `spectrum merge` (which does) and use the merged folder"
        )


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"{twice!r} appears twice")
    return found


def _checked_entry(path: Path, name: str, entry: object) -> dict:
    """One tensor's header entry, its JSON shape checked: dtype, shape, data_offsets."""
    where = f"corrupt safetensors file {path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not described by a JSON object")
    if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
        raise UserError(f"unsupported dtype {entry.get('dtype')!r} of {name} in {path}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_natural(n) for n in shape):
        raise UserError(f"{where} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_natural, offsets)):
        raise UserError(f"{where} has data_offsets {offsets!r}, not [start, end]")
    return entry


def _natural(value: object) -> bool:
    return type(value) is int and value >= 0


def _check_layout(path: Path, tensors: dict[str, dict], data_bytes: int) -> None:
    """The data section is the tensors back to back in offset order, each exactly
    dtype × shape bytes long, ending at the end of the file: no overlap, no gap, no
    reversed span (the rules of the safetensors library, which refuses other files)."""
    where = f"corrupt safetensors file {path}"
    end = 0
    for name, entry in sorted(tensors.items(), key=lambda item: item[1]["data_offsets"]):
        start, stop = entry["data_offsets"]
        if start != end:
            what = "overlaps the tensor before it" if start < end else "leaves a gap before it"
            raise UserError(f"{where}: tensor {name!r} at bytes {start}-{stop} {what}")
        if stop < start:
            raise UserError(f"{where}: tensor {name!r} ends (byte {stop}) before it starts")
        itemsize = torch.empty((), dtype=DTYPES[entry["dtype"]]).element_size()
        expected = math.prod(entry["shape"]) * itemsize
        if stop - start != expected:
            raise UserError(
                f"{where}: tensor {name!r} is {entry['dtype']} {entry['shape']} "
                f"({expected} bytes) but spans {stop - start} bytes"
            )
        end = stop
    if end != data_bytes:
        raise UserError(
            f"truncated or corrupt safetensors file {path}: header promises "
            f"{end} bytes of data, the file has {data_bytes}"
        )


def _file_sha256(path: Path) -> str:
    blob = Path(os.path.realpath(path))
    if (
        path.is_symlink()
        and blob.parent.name == "blobs"
        and re.fullmatch(r"[0-9a-f]{64}", blob.name)
    ):
        return blob.name
    return file_sha256(path)


def _read_json(path: Path, *, required: bool = False) -> dict:
    if not path.is_file():
        if required:
            raise UserError(f"{path.parent}: no {path.name}")
        return {}
    try:
        found = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(found, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(found).__name__}")
    return found


def resolve_model_path(path_or_id: str | Path) -> tuple[Path, str]:
    """A local folder as is; a hub id through huggingface_hub (cache first, then network)."""
    text = str(path_or_id)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"{text} is a file; pass the model's folder")
        return local, text
    if not _HUB_ID.match(text):
        raise UserError(f"no such model folder: {text}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS)), text
    except Exception as error:  # offline, unreachable, unknown repo, gated: all one answer
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{text!r} is not a local folder and the Hugging Face hub could not provide it "
            f"({reason}); download it and pass its local path"
        ) from None


def open_checkpoint(path_or_id: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    path, source = resolve_model_path(path_or_id)
    return Checkpoint(path, allow_pickle=allow_pickle, source=source)
