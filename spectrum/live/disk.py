"""The ``disk`` memory policy: the parents stay in their files, read per ``set()``.

For pairs whose parents do not fit in host memory (a Qwen3-30B-A3B pair is 2 × 61 GB),
``DiskParentTensors`` stands in for ``ParentTensors``: every access to a tensor is a
positioned read from its safetensors file (``spectrum.weights.checkpoint``), straight into a fresh
tensor, so the process holds only the tensors in hand. ``PreparedMerge`` keeps a method's
prepared tensors on the device as far as its budget allows (none on CPU, where the device
*is* the host) and re-reads and re-prepares the rest on every pass, one tensor read ahead
on a background thread so the disk and the merge overlap.

Host bound, beside the process itself and (on CPU only) the model: the tensor in hand and
the one read ahead, each with its 2 (3 with a base) parent tensors in their own dtype, at
most ``inputs × (the largest two neighbours in reading order)`` bytes (Qwen3-30B-A3B:
2 × (622 MB + a norm) ≈ 1.2 GB: the embedding and lm_head sit at the two ends), plus the
float32 merge of the tensor in hand when it is merged on the host; while the model loads,
the views probe of a fused expert parameter (3.2 GB at 30B-A3B's shapes) is the larger.
The OS page cache keeps file pages too, but those are reclaimable, not the process's.
``spectrum.weights.planner`` states the same figure per pair.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from spectrum.live.prepared import ParentTensors
from spectrum.weights.checkpoint import Checkpoint, open_checkpoint, refuse_quantized
from spectrum.weights.validate import validate_parents

log = logging.getLogger(__name__)


class DiskTensors(Mapping[str, Tensor]):
    """One checkpoint's tensors by name; each lookup reads the tensor from disk."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self._names = checkpoint.names()
        self._known = set(self._names)
        self._lock = threading.Lock()
        self.bytes_read = 0  # every read, so a benchmark can set time against bytes

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._known:
            raise KeyError(name)
        tensor = self.checkpoint.get(name)
        with self._lock:  # the read-ahead thread counts too
            self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def numel(self, name: str) -> int:
        return math.prod(self.checkpoint.shape(name))

    def dtype(self, name: str) -> torch.dtype:
        return self.checkpoint.dtype(name)


class DiskParentTensors(ParentTensors):
    """``ParentTensors`` whose tensors stay on disk; shapes and dtypes come from headers."""

    on_disk = True

    @classmethod
    def read(cls, direct, thinking, base=None, *, allow_pickle: bool = False):
        paths = [direct, thinking] if base is None else [direct, thinking, base]
        checkpoints = [open_checkpoint(p, allow_pickle=allow_pickle) for p in paths]
        for warning in validate_parents(*checkpoints):
            log.warning(warning)
        tensors = [DiskTensors(ckpt) for ckpt in checkpoints]
        base_tensors = tensors[2] if base is not None else None
        return cls(*tensors[:2], base_tensors, checkpoints[0].config, checkpoints[0].path)

    def merged_names(self) -> list[str]:
        return [name for name in self.direct if self.direct.dtype(name).is_floating_point]

    def numel(self, name: str) -> int:
        return self.direct.numel(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.direct.dtype(name)

    def bytes_read(self) -> int:
        """Bytes read from the parents' files so far (all parents, read-ahead included)."""
        sources = (self.direct, self.thinking, self.base)
        return sum(source.bytes_read for source in sources if source is not None)


def read_parents(
    direct: str | Path,
    thinking: str | Path,
    base: str | Path | None = None,
    *,
    policy: str,
    allow_pickle: bool = False,
) -> ParentTensors:
    """The parents as ``policy`` keeps them: on disk for ``disk``, in host memory otherwise."""
    for path in (direct, thinking, base):
        if path is not None:  # headers only: refused before a tensor is read
            refuse_quantized(open_checkpoint(path, allow_pickle=allow_pickle), "the live merger")
    kind = DiskParentTensors if policy == "disk" else ParentTensors
    return kind.read(direct, thinking, base, allow_pickle=allow_pickle)
