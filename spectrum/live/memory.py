"""Where the live merger keeps a method's λ-independent tensors.

* ``resident``: on the merge device; a λ change reads them in place.
* ``streamed``: in (pinned, when CUDA is present) host memory, copied to the device in
  chunks on every ``set()``; for models whose prepared tensors do not fit the device
  (Qwen3-30B-A3B on one 80 GB GPU). On CPU host and device are the same memory, so
  ``auto`` always means resident there; ``policy="streamed"`` forces the chunked path.
* ``disk``: the parents stay in their files and are read per ``set()``; prepared tensors
  stay on the device as far as they fit (``spectrum.live.disk``). The planner
  (``spectrum.weights.planner``) picks it when the parents do not fit in host memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from spectrum.errors import UserError

POLICIES = ("auto", "resident", "streamed", "disk")
# Leave room for activations, the KV cache and allocator slack beside the prepared tensors.
DEVICE_HEADROOM = 0.85
DEFAULT_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MemoryPlan:
    policy: str  # "resident", "streamed" or "disk"
    device: torch.device
    needed_bytes: int
    free_bytes: int | None  # free device memory when decided; None on CPU
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def describe(self) -> str:
        text = f"{self.policy} on {self.device}: {_size(self.needed_bytes)} prepared"
        if self.free_bytes is None:
            return text
        return f"{text}, {_size(self.free_bytes)} free"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise UserError(f"unknown memory policy {policy!r}; choose from {', '.join(POLICIES)}")


def free_device_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def plan_memory(
    needed_bytes: int,
    device: torch.device,
    policy: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> MemoryPlan:
    """Choose resident vs streamed for ``needed_bytes`` of prepared tensors on ``device``."""
    free = free_device_bytes(device)
    chosen = choose_policy(policy, needed_bytes, free)
    return MemoryPlan(chosen, device, needed_bytes, free, chunk_bytes)


def choose_policy(policy: str, needed_bytes: int, free_bytes: int | None) -> str:
    """``auto`` → resident when the bytes fit the free memory with headroom (or on CPU)."""
    check_policy(policy)
    if policy != "auto":
        return policy
    fits = free_bytes is None or needed_bytes <= DEVICE_HEADROOM * free_bytes
    return "resident" if fits else "streamed"


def disk_budget(device: torch.device, free_bytes: int | None, reserve: int) -> int:
    """Bytes of prepared tensors the ``disk`` policy keeps on ``device``: none on CPU (the
    host is what the policy spares), else what the headroom leaves beside ``reserve``."""
    if device.type == "cpu" or free_bytes is None:
        return 0
    return max(0, int(DEVICE_HEADROOM * free_bytes) - reserve)


def pinned(host: torch.Tensor) -> torch.Tensor:
    """``host`` in pinned memory when CUDA exists, so device uploads can run asynchronously."""
    return host.pin_memory() if torch.cuda.is_available() else host


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy of ``tensor`` (never an alias: the device tensor may be freed or reused)."""
    return pinned(tensor.detach().to("cpu", copy=True))


def chunked(sizes: Iterable[tuple[str, int]], chunk_bytes: int) -> Iterator[list[str]]:
    """Group names into runs of at most ``chunk_bytes`` (a bigger tensor is its own run)."""
    chunk: list[str] = []
    total = 0
    for name, size in sizes:
        if chunk and total + size > chunk_bytes:
            yield chunk
            chunk, total = [], 0
        chunk.append(name)
        total += size
    if chunk:
        yield chunk
