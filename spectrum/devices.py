"""The one device rule: ``auto`` is the first CUDA GPU when torch sees one, else the CPU."""

from __future__ import annotations

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
