"""Shared fixtures: tiny random pairs written once per session into a temp folder."""

from __future__ import annotations

import os
import tempfile

import pytest

from spectrum.toy.tiny import save_tiny_pair

# Remembered file hashes go to a per-run folder, not the user's ~/.cache (subprocesses too).
os.environ["SPECTRUM_CACHE"] = tempfile.mkdtemp(prefix="spectrum-cache-")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.sh on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """{base, direct, thinking} paths of a tiny random Qwen3 pair, sharded safetensors."""
    return save_tiny_pair(tmp_path_factory.mktemp("tiny_qwen3"), "qwen3", seed=0)


@pytest.fixture(scope="session")
def tiny_moe_pair(tmp_path_factory):
    """{base, direct, thinking} paths of a tiny random Qwen3-MoE pair, sharded safetensors."""
    return save_tiny_pair(tmp_path_factory.mktemp("tiny_qwen3_moe"), "qwen3_moe", seed=0)
