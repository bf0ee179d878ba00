"""The ``disk`` live policy: parents read from their files per ``set()``, never held.

Expected values come from the ``resident`` policy on the same files: the two must agree
byte for byte, for several methods and λ, with all, some or none of the prepared tensors
kept (the hybrid the disk policy uses on a GPU that holds part of them).
"""

from __future__ import annotations

import pytest
import torch

from spectrum.live import LiveMerger
from spectrum.live.disk import DiskParentTensors, DiskTensors
from spectrum.merge import MergeSpec

torch.set_num_threads(1)
METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare", "topk_replace", "emr")


def model_bytes(merger: LiveMerger) -> dict[str, bytes]:
    return {
        name: tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        for name, tensor in merger.model.state_dict().items()
    }


@pytest.fixture(scope="module")
def resident(tiny_moe_pair):
    pair = tiny_moe_pair
    return LiveMerger.load(pair["direct"], pair["thinking"], pair["base"], policy="resident")


@pytest.fixture(scope="module")
def disk(tiny_moe_pair):
    pair = tiny_moe_pair
    return LiveMerger.load(pair["direct"], pair["thinking"], pair["base"], policy="disk")


def test_disk_parents_hold_no_tensors(disk):
    assert isinstance(disk.parents, DiskParentTensors)
    for source in (disk.parents.direct, disk.parents.thinking, disk.parents.base):
        assert isinstance(source, DiskTensors)
        assert not any(isinstance(v, torch.Tensor) for v in vars(source).values())


@pytest.mark.parametrize("method", METHODS)
def test_disk_equals_resident_byte_for_byte(resident, disk, method):
    for lam in (0.3, 0.8, 0.55):
        resident.set(MergeSpec(method, lam))
        before = disk.parents.bytes_read()
        loaded = disk.set(MergeSpec(method, lam))
        assert loaded.spec.method == method and disk.memory.policy == "disk"
        assert model_bytes(disk) == model_bytes(resident), (method, lam)
        # Nothing kept on CPU: every set() reads the parents again.
        assert disk.parents.bytes_read() > before


@pytest.mark.parametrize("method", ("slerp", "ties"))
def test_disk_with_part_of_the_prepared_kept(tiny_moe_pair, resident, method):
    pair = tiny_moe_pair
    merger = LiveMerger.load(pair["direct"], pair["thinking"], pair["base"], policy="disk")
    merger.disk_resident_bytes = 40_000  # some tensors kept, the rest re-read per set()
    merger.set(MergeSpec(method, 0.1))
    kept = merger.prepared_bytes
    assert 0 < kept <= 41_000 and kept < merger.memory.needed_bytes  # scalars: estimated
    for lam in (0.25, 0.9):
        resident.set(MergeSpec(method, lam))
        merger.set(MergeSpec(method, lam))
        assert model_bytes(merger) == model_bytes(resident), (method, lam)


def test_disk_scope_and_out_of_scope_names(resident, disk):
    for merger in (resident, disk):
        merger.set(MergeSpec("task_arithmetic", 0.7, layers="1-2", modules=("mlp",)))
    assert model_bytes(disk) == model_bytes(resident)
