"""The one device rule (``auto`` is the first CUDA GPU when torch sees one, else the CPU),
and the host allocator setting the long-running commands use."""

from __future__ import annotations

import ctypes
import re

import torch

from spectrum.errors import UserError

_NAMED = re.compile(r"cpu|cuda(:\d+)?")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; a CUDA device is
    refused up front when torch sees no GPU, rather than failing minutes into a load."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _NAMED.fullmatch(device):
        raise UserError(f"unknown device {device!r}; choose cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def return_freed_memory_to_os() -> None:
    """Serve every block of 4 MiB or more by mmap, so a freed tensor leaves RSS at once.

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed; from
    then on tensors come from heap arenas that fragment and keep their memory, and
    streaming a model looks like holding a good part of it. A fixed threshold costs page
    faults (the kernel zeroes each new mapping) but keeps the peak at a few tensors.
    Process-wide: only commands call it (merge, app), never the library. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        # Fixing the threshold also fixes the trim threshold at 128 KiB, and trimming freed
        # slices hands their pages back only to fault them in again for the next slice.
        libc.mallopt(-1, 16 << 20)  # M_TRIM_THRESHOLD
    except OSError:
        return
