"""Milliseconds per live ``set()`` for every merge method, beside the memory-bandwidth bound.

A λ change must at least read the method's prepared tensors and write every merged
parameter once; ``bound_ms`` is those bytes divided by the copy bandwidth measured in the
same run: ``dst.copy_(src)`` (its read and its write counted) of a buffer that moves as
many bytes as the update (at most 1 GiB), so both sit in the same cache level. ``ms`` is the median
``LoadedMerge.set_ms`` over a sweep of distinct λ values (each a new slider position, so
the Top-K strategies pay for their new thresholds), after one warm-up ``set()`` that
prepares the method.

Models: ``tiny`` is spectrum.toy.tiny's random Qwen3 written to disk and loaded as a user
would; ``small`` (CPU-sized) and ``qwen3-4b`` (Qwen3-4B's shapes, bf16) are random parents
built in memory (no disk: 3 × 8 GB of checkpoints would only time the disk). Usage:

    python bench/live_remerge.py [--device cpu|cuda] [--shape tiny|small|qwen3-4b]
                                 [--methods linear,slerp] [--repeats 9] [--json]
                                 [--param density]   # vary a parameter, not λ
    PYTHONPATH=. .venv-vllm/bin/python bench/live_remerge.py --backend vllm   # vLLM, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from spectrum.live import LiveMerger
from spectrum.live.core import LiveBackend
from spectrum.live.prepared import ParentTensors
from spectrum.live.views import checkpoint_views
from spectrum.merge import MergeSpec
from spectrum.methods import REGISTRY
from spectrum.toy.tiny import save_random_model, save_tiny_pair, tiny_config
from spectrum.toy.tokenizer import build_char_tokenizer

SHAPES = {
    "small": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=8192,
        tie_word_embeddings=False,
    ),
    # Qwen3-4B's config.json shapes.
    "qwen3-4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}


def copy_bandwidth(device: torch.device, n_bytes: int, clock=time.perf_counter) -> float:
    """Bytes per second of a plain device copy (read + write counted), best of nine
    (``clock``: wall time, or ``time.thread_time`` for CPU time on a CPU)."""
    src = torch.empty(max(n_bytes, 2**20) // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(9):
        sync(device)
        start = clock()
        dst.copy_(src)
        sync(device)
        best = min(best, clock() - start)
    return 2 * n_bytes / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_merger(shape: str, device: torch.device, dtype: torch.dtype) -> LiveMerger:
    """A random base and two children differing from it, as a real pair, built in memory."""
    config = Qwen3Config(**SHAPES[shape], eos_token_id=2, pad_token_id=0, bos_token_id=None)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    views = checkpoint_views(model)
    generator = torch.Generator(device).manual_seed(0)

    def child(base: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(base.shape, generator=generator, device=device, dtype=base.dtype)
        return (base + 0.05 * base.abs().mean() * noise).cpu()

    base = {name: view.cpu() for name, view in views.items()}
    direct = {name: child(view) for name, view in views.items()}
    thinking = {name: child(view) for name, view in views.items()}
    with torch.no_grad():
        for name, view in views.items():
            view.copy_(direct[name])
    parents = ParentTensors(direct, thinking, base, config.to_dict())
    return LiveMerger(model, None, parents)


def file_merger(device: torch.device, folder: str, backend: str) -> LiveBackend:
    if backend == "transformers":
        pair = save_tiny_pair(folder, "qwen3", seed=0)
        return LiveMerger.load(pair["direct"], pair["thinking"], pair["base"], device=device)
    # vLLM logs to stdout; keep it to errors so --json stays one object per line.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from spectrum.live.vllm import VllmLiveMerger

    # vLLM's CPU attention has no kernel for the tiny model's head_dim 16.
    config = tiny_config(vocab_size=len(build_char_tokenizer()), head_dim=32)
    base = save_random_model(f"{folder}/base", config, 0)
    direct = save_random_model(f"{folder}/direct", config, 1, like=base)
    thinking = save_random_model(f"{folder}/thinking", config, 2, like=base)
    return VllmLiveMerger.load(
        direct,
        thinking,
        base,
        device=device,
        dtype="float32",
        max_model_len=128,
        enforce_eager=True,
    )


def measure(merger: LiveBackend, method: str, repeats: int, param: str | None = None) -> dict:
    """Median ``set()`` over distinct values of λ, or of the method parameter ``param`` (at
    λ 0.5: TIES's density), after a warm-up ``set()`` that prepares the method."""
    merger.set(MergeSpec(method, 0.5))  # prepares the method (and its whole-model statistics)
    values = [0.05 + 0.9 * i / max(repeats - 1, 1) for i in range(repeats)]
    times, cpu_times = [], []
    for value in values:
        spec = (
            MergeSpec(method, value)
            if param is None
            else MergeSpec(method, 0.5, params={param: value})
        )
        cpu = time.thread_time()
        times.append(merger.set(spec).set_ms)
        cpu_times.append((time.thread_time() - cpu) * 1e3)
    direct = merger.parents.direct
    written = sum(direct[name].numel() * direct[name].element_size() for name in merger.names)
    moved = merger.prepared_bytes + written
    # Capped: 1 GiB is far past every cache, and a bigger buffer could exhaust the GPU.
    bandwidth = copy_bandwidth(merger.device, min(moved // 2, 2**30))
    cpu_bandwidth = copy_bandwidth(merger.device, min(moved // 2, 2**30), time.thread_time)
    return {
        "method": method,
        "varied": param or "lam",
        "device": merger.device.type,
        "ms": statistics.median(times),
        "min_ms": min(times),
        # The first new value pays what is made once (Top-K's and TIES's index: one sort).
        "first_ms": times[0],
        "first_cpu_ms": cpu_times[0],
        "bound_ms": moved / bandwidth * 1e3,
        # The same in this thread's CPU time: steadier where other jobs share the cores.
        "cpu_ms": statistics.median(cpu_times),
        "cpu_bound_ms": moved / cpu_bandwidth * 1e3,
        "bytes_moved": moved,
        # Kept beside the prepared tensors, never read per set (Top-K's and TIES's indexes).
        # (getattr: the bench also times older code, for a before/after pair.)
        "index_bytes": getattr(merger, "index_bytes", 0),
        "copy_gbps": bandwidth / 1e9,
        "policy": merger.memory.policy,
        "backend": type(merger).__name__,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="vllm needs the vLLM venv (tiny model only): "
        "PYTHONPATH=. .venv-vllm/bin/python bench/live_remerge.py --backend vllm",
    )
    parser.add_argument("--shape", choices=("tiny", *SHAPES), default=None)
    parser.add_argument("--methods", default=",".join(REGISTRY))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--param",
        default=None,
        help="vary this method parameter (e.g. density for ties) at λ 0.5 instead of λ",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = args.shape or ("tiny" if device.type == "cpu" else "qwen3-4b")
    dtype = torch.bfloat16 if shape == "qwen3-4b" else torch.float32
    with tempfile.TemporaryDirectory() as folder:
        if shape == "tiny":
            merger = file_merger(device, folder, args.backend)
        else:
            merger = random_merger(shape, device, dtype)
        for method in args.methods.split(","):
            row = measure(merger, method, args.repeats, args.param)
            row.update(shape=shape, dtype=str(dtype).removeprefix("torch."))
            if args.json:
                print(json.dumps(row, allow_nan=False), flush=True)
            else:
                print(
                    f"{method:18s} new {row['varied']:8s} {row['device']:4s} {shape:8s}"
                    f" {row['ms']:9.2f} ms"
                    f"  bound {row['bound_ms']:8.3f} ms  ({row['policy']})"
                    f"  CPU {row['cpu_ms']:9.2f} ms  bound {row['cpu_bound_ms']:8.3f} ms"
                    f"  ({row['cpu_ms'] / row['cpu_bound_ms']:.1f}x)"
                    f"  index {row['index_bytes'] / 2**20:.0f} MiB",
                    flush=True,
                )


if __name__ == "__main__":
    main()
