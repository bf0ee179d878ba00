"""A merge killed mid-way leaves nothing at the destination; memory stays at a few tensors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spectrum.cli import main

HIDDEN, INTERMEDIATE, LAYERS = 1024, 3072, 6
LARGEST_TENSOR = HIDDEN * INTERMEDIATE * 4  # float32 bytes


def _write_parent(folder: Path, seed: int, noise: float) -> int:
    """A ~320 MB random Qwen3-shaped float32 checkpoint, one shard per layer; its bytes."""
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    jitter = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        shapes = {
            **{f"{prefix}.self_attn.{p}_proj.weight": (HIDDEN, HIDDEN) for p in "qkvo"},
            **{f"{prefix}.mlp.{p}_proj.weight": (INTERMEDIATE, HIDDEN) for p in ("gate", "up")},
            f"{prefix}.mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            f"{prefix}.input_layernorm.weight": (HIDDEN,),
        }
        tensors = {
            name: torch.randn(shape, generator=generator)
            + noise * torch.randn(shape, generator=jitter)
            for name, shape in shapes.items()
        }
        shard = f"model-{layer:05d}.safetensors"
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
        total += sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}
    config |= {"num_hidden_layers": LAYERS, "hidden_size": HIDDEN}
    (folder / "config.json").write_text(json.dumps(config))
    return total


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("big_pair")
    size = _write_parent(root / "direct", 1, 0.0)
    _write_parent(root / "thinking", 2, 0.05)
    return root / "direct", root / "thinking", size


def _merge_command(direct: Path, thinking: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "spectrum", "merge", "--direct", str(direct),
        "--thinking", str(thinking), "--lam", "0.5", "--out", str(out),
        "--max-shard-size", "20MB", "--device", "cpu", "--quiet",
    ]  # fmt: skip


def test_sigkill_mid_merge_leaves_no_destination(big_pair, tmp_path):
    direct, thinking, _ = big_pair
    out = tmp_path / "merged"
    process = subprocess.Popen(_merge_command(direct, thinking, out))
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(f".merged.tmp-{process.pid}-*/*.safetensors")):
        assert process.poll() is None, "the merge finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    (staging,) = tmp_path.glob(f".merged.tmp-{process.pid}-*")  # this job's own folder
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    assert not out.exists()
    assert staging.is_dir()  # the leftover: its pid is dead, so the next run removes it
    assert main([*_merge_command(direct, thinking, out)[3:]]) == 0
    assert not staging.exists() and (out / "merge_config.json").is_file()


# Run through a bare Python parent: a child forked from pytest itself would report pytest's
# own peak (Linux keeps the pre-exec high-water mark in ru_maxrss).
_LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); sys.exit(status >> 8)"
)


def _peak_rss(command: list[str]) -> int:
    """Peak resident memory of one command, in bytes (Linux reports KiB)."""
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], capture_output=True)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1]) * 1024


def test_peak_memory_is_a_few_tensors_not_the_model(big_pair, tiny_pair, tmp_path):
    direct, thinking, size = big_pair
    baseline = _peak_rss(_merge_command(tiny_pair["direct"], tiny_pair["thinking"], tmp_path / "a"))
    big = _peak_rss(_merge_command(direct, thinking, tmp_path / "b"))
    growth = big - baseline
    print(f"peak RSS: tiny merge {baseline / 2**20:.0f} MiB, big merge {big / 2**20:.0f} MiB")
    # In flight: one read ahead, the current parents, their float32 temporaries, the output.
    # Holding even half of one parent would break this bound.
    assert growth < 12 * LARGEST_TENSOR < size / 2
