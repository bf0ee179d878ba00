"""Exact "top fraction k by magnitude" selection, for one tensor or streamed over a model.

Selection rule, shared by TIES's trim, TWIN's sparsification and the Top-K strategies:
for a fraction k of N values, ``count = floor(k·N + 0.5)`` (round half up); the selected
positions are those whose magnitude is ``>=`` the count-th largest magnitude. Ties *at*
the threshold are all selected, so when several values equal the threshold slightly more
than ``count`` positions are chosen (never fewer). k = 0 selects nothing (the threshold
is ``None``); k = 1 selects everything. "Per tensor" means per stored tensor: Qwen3-MoE's
fused experts (``mlp.experts.gate_up_proj``, [experts, 2I, H]) are one tensor.

The count-th largest value is found exactly without sorting and without concatenating
tensors: the bit pattern of a non-negative float32, read as an int32, orders the same way
as the float. A coarse pass counts values per high 16 bits (65,536 buckets); a fine pass
counts the low 16 bits of just the values in the one bucket that holds the count-th
largest. The coarse counts are kept, and so are the fine counts of every bucket already
refined, so a new k costs at most one more pass (none when its bucket was seen before).

Where many k nobody prefetched will follow (the live merger's slider), ``index()`` trades
memory for that pass: it keeps every magnitude's bits sorted (4 bytes per value, in host
memory), and a new k's threshold is then a lookup: the coarse counts name its bucket, a
binary search per tensor finds that bucket's values, and the few of them are sorted.

API: ``MagnitudeThreshold(magnitudes)`` where ``magnitudes()`` yields non-negative float32
tensors (it is called once for the coarse counts and once per refinement batch);
``.prefetch(fractions)`` refines the buckets of several k in one pass;
``.index()`` sorts once so later k need no pass; ``.threshold(k) -> float | None``;
``.total`` is N. ``top_fraction_mask(x, k)`` is the one-tensor shortcut.
``sliced_thresholds(magnitudes, k)`` is the same two passes for several tensors at once
that arrive slice by slice (TIES's trim in the streaming engine): nothing but the slices
and the counts is held.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from spectrum.errors import UserError

_BITS = 16
_BUCKETS = 1 << _BITS
_LOW_MASK = _BUCKETS - 1

Magnitudes = Callable[[], Iterable[Tensor]]


def check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        # k = λ for the Top-K strategies: a λ beyond [0, 1] has no meaning there.
        raise UserError(f"a top-k fraction (k = λ) must lie in [0, 1], got {fraction}")


def selected_count(fraction: float, total: int) -> int:
    """How many of ``total`` positions a fraction selects: round half up."""
    check_fraction(fraction)
    return min(total, math.floor(fraction * total + 0.5))


def _bits(magnitude: Tensor) -> Tensor:
    # The ordering trick holds for float32 only; a half-precision view would pair values.
    if magnitude.dtype != torch.float32:
        raise TypeError(f"magnitudes must be float32, got {magnitude.dtype}")
    return magnitude.detach().contiguous().view(torch.int32).reshape(-1)


def _histogram(values: Tensor) -> Tensor:
    return torch.bincount(values, minlength=_BUCKETS).to("cpu", torch.int64)


def _at_or_above(counts: Tensor) -> Tensor:
    """at_or_above[i] = sum(counts[i:]), with one trailing 0 for i = len(counts)."""
    tail = counts.flip(0).cumsum(0).flip(0)
    return torch.cat([tail, tail.new_zeros(1)])


def _locate(counts: Tensor, rank: int) -> tuple[int, int]:
    """The index holding the rank-th largest value (1-based), and its rank inside it."""
    at_or_above = _at_or_above(counts)
    index = int((at_or_above[:-1] >= rank).nonzero().max())
    return index, rank - int(at_or_above[index + 1])


# Elements per block of a refinement pass: its shifted bits and mask stay in the cache, so
# the pass reads each magnitude from memory once (measured 2x faster than whole tensors).
_BLOCK = 1 << 18
_EMPTY = torch.zeros(0, dtype=torch.int32)


def _collect(bits: Tensor, found: dict[int, list[Tensor]]) -> None:
    """Append to ``found[bucket]`` the values of ``bits`` whose high half is ``bucket``."""
    size = min(_BLOCK, bits.numel())
    high = torch.empty(size, dtype=torch.int32, device=bits.device)
    hit = torch.empty(size, dtype=torch.bool, device=bits.device)
    for start in range(0, bits.numel(), _BLOCK):
        block = bits[start : start + _BLOCK]
        shifted, selected = high[: block.numel()], hit[: block.numel()]
        torch.bitwise_right_shift(block, _BITS, out=shifted)
        for bucket, parts in found.items():
            parts.append(block[torch.eq(shifted, bucket, out=selected)])


class MagnitudeThreshold:
    """Exact thresholds for top fractions of all magnitudes that ``magnitudes()`` yields."""

    def __init__(self, magnitudes: Magnitudes) -> None:
        self._magnitudes = magnitudes
        coarse = torch.zeros(_BUCKETS, dtype=torch.int64)
        for magnitude in magnitudes():
            # A negative value (not a magnitude) fails here: bincount takes no negatives.
            coarse += _histogram(_bits(magnitude) >> _BITS)
        self._coarse = coarse
        self.total = int(coarse.sum())
        self._fine: dict[int, Tensor] = {}
        self._sorted: list[Tensor] | None = None  # index(): each magnitude's sorted bits
        # apply() asks once per tensor for the same k: answer repeats from here.
        self._thresholds: dict[float, float | None] = {}
        self._lock = threading.Lock()

    def _bucket_for(self, fraction: float) -> tuple[int, int] | None:
        count = selected_count(fraction, self.total)
        return None if count == 0 else _locate(self._coarse, count)

    def prefetch(self, fractions: Iterable[float]) -> None:
        """Refine, in one pass, every bucket these fractions need and no pass refined yet."""
        with self._lock:
            located = (self._bucket_for(fraction) for fraction in fractions)
            wanted = {hit[0] for hit in located if hit is not None} - set(self._fine)
            if not wanted:
                return
            found: dict[int, list[Tensor]] = {bucket: [] for bucket in wanted}
            for magnitude in self._magnitudes():
                _collect(_bits(magnitude), found)
            for bucket, parts in found.items():
                low = torch.cat(parts).bitwise_and_(_LOW_MASK) if parts else _EMPTY
                self._fine[bucket] = _histogram(low)

    def index(self) -> None:
        """Keep every magnitude's bits sorted (one pass, 4 bytes per value on the host), so
        that any fraction's threshold is found without another pass."""
        with self._lock:
            if self._sorted is None:
                # Sorted where the magnitude lives (a GPU sorts fast), kept on the host.
                self._sorted = [torch.sort(_bits(m)).values.cpu() for m in self._magnitudes()]

    @property
    def index_bytes(self) -> int:
        """Bytes ``index()`` keeps (0 before it ran)."""
        return sum(t.numel() * t.element_size() for t in self._sorted or ())

    def threshold(self, fraction: float) -> float | None:
        """The count-th largest magnitude for this fraction; ``None`` when nothing is selected."""
        if fraction not in self._thresholds:
            self._thresholds[fraction] = self._locate_threshold(fraction)
        return self._thresholds[fraction]

    def _locate_threshold(self, fraction: float) -> float | None:
        hit = self._bucket_for(fraction)
        if hit is None:
            return None
        bucket, rank = hit
        if self._sorted is not None:
            in_bucket = self._sorted_bucket(bucket)
            bits = in_bucket[in_bucket.numel() - rank : in_bucket.numel() - rank + 1]
            return float(bits.view(torch.float32).item())
        self.prefetch([fraction])
        return _value(bucket, self._fine[bucket], rank)

    def _sorted_bucket(self, bucket: int) -> Tensor:
        """The bits of every magnitude whose high half is ``bucket``, ascending (index())."""
        # Counts of values <= each bound: below the bucket, and up to its last pattern.
        bounds = torch.tensor(
            [(bucket << _BITS) - 1, (bucket << _BITS) | _LOW_MASK], dtype=torch.int32
        )
        parts = []
        for ordered in self._sorted:
            start, stop = torch.searchsorted(ordered, bounds, right=True).tolist()
            parts.append(ordered[start:stop])
        return torch.cat(parts).sort().values


def _value(bucket: int, fine: Tensor, rank: int) -> float:
    """The rank-th largest value of a bucket, from the counts of its low 16 bits."""
    low, _ = _locate(fine, rank)
    bits = torch.tensor([(bucket << _BITS) | low], dtype=torch.int32)
    return float(bits.view(torch.float32).item())


def sliced_thresholds(
    magnitudes: Callable[[], Iterable[Sequence[Tensor]]], fraction: float
) -> list[float | None]:
    """The threshold for ``fraction`` of each of several tensors, exactly as
    ``MagnitudeThreshold`` finds it for each alone: ``magnitudes()`` yields, slice by slice,
    one non-negative float32 piece per tensor (position i always tensor i), and is called
    twice: coarse counts of every tensor, then the one bucket each threshold lies in."""
    coarse: list[Tensor] = []
    for pieces in magnitudes():
        counts = [_histogram(_bits(piece) >> _BITS) for piece in pieces]
        coarse = counts if not coarse else [c.add_(n) for c, n in zip(coarse, counts, strict=True)]
    located = []
    for counts in coarse:
        count = selected_count(fraction, int(counts.sum()))
        located.append(None if count == 0 else _locate(counts, count))
    if all(hit is None for hit in located):
        return [None] * len(located)
    found: list[dict[int, list[Tensor]]] = [{hit[0]: []} if hit else {} for hit in located]
    for pieces in magnitudes():
        for piece, wanted in zip(pieces, found, strict=True):
            if wanted:
                _collect(_bits(piece), wanted)
    thresholds: list[float | None] = []
    for hit, wanted in zip(located, found, strict=True):
        if hit is None:
            thresholds.append(None)
            continue
        bucket, rank = hit
        fine = _histogram(torch.cat(wanted[bucket]).bitwise_and_(_LOW_MASK))
        thresholds.append(_value(bucket, fine, rank))
    return thresholds


def top_fraction_mask(values: Tensor, fraction: float) -> Tensor:
    """Boolean mask of the top ``fraction`` of ``values`` by magnitude (rule: module docstring)."""
    magnitude = values.abs()
    threshold = MagnitudeThreshold(lambda: (magnitude,)).threshold(fraction)
    if threshold is None:
        return torch.zeros_like(values, dtype=torch.bool)
    return magnitude >= threshold
