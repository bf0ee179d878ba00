"""Merge throughput: `spectrum merge` against mergekit on the same ≥ 1 GB random Qwen3 files.

Writes a random bf16 Qwen3-shaped base/direct/thinking triple (sharded safetensors) once into
a cache folder, then runs each merge as a separate process and reports wall seconds, GB/s
(one parent's bytes per second) and peak RSS, with spectrum ÷ mergekit ratios from the same
run. Every merge starts with its inputs evicted from the page cache (``posix_fadvise``
DONTNEED, no root needed), and ``÷ bound`` is its wall time over the cold-disk bound
measured in the same run the same way: reading the method's inputs (2 or 3 parents) cold,
plus writing one parent-sized file. ``--warm`` keeps the files cached instead (no bound).
Usage:

    python bench/merge_throughput.py [--cache /tmp/spectrum-bench] [--methods linear,ties]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM

from spectrum.toy.tiny import tiny_config
from spectrum.weights.output import ShardWriter, plan_shards

# ~534 M parameters: 1.07 GB per parent in bf16.
SHAPE = dict(
    hidden_size=2048, intermediate_size=6144, num_hidden_layers=8, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, vocab_size=32000, architectures=["Qwen3ForCausalLM"],
)  # fmt: skip
LAM = 0.7
# A bare Python parent: its child's ru_maxrss is the child's own peak (a child forked from a
# big process would report the parent's pre-exec pages too).
LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); "
    "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime); sys.exit(status >> 8)"
)


def write_parents(cache: Path) -> dict[str, Path]:
    """base, direct, thinking: direct/thinking = base + 5 % seeded noise. Written once."""
    config = tiny_config("qwen3", **SHAPE)
    with torch.device("meta"):
        shapes = {
            n: tuple(t.shape)
            for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    shards = plan_shards([(n, s, torch.bfloat16) for n, s in shapes.items()], 400 * 10**6)
    paths = {role: cache / role for role in ("base", "direct", "thinking")}
    if (cache / "complete").exists():
        return paths
    shutil.rmtree(cache, ignore_errors=True)
    for seed, (role, path) in enumerate(paths.items()):
        path.mkdir(parents=True)
        config.save_pretrained(path)
        writer = ShardWriter(path, shards)
        for name, shape, _ in (entry for shard in shards for entry in shard):
            key = zlib.crc32(name.encode())
            tensor = torch.randn(shape, generator=torch.Generator().manual_seed(key))
            if role != "base":
                noise = torch.Generator().manual_seed(key + seed * 7919)
                tensor += 0.05 * torch.randn(shape, generator=noise)
            writer.add(name, tensor.to(torch.bfloat16))
        writer.close()
    (cache / "complete").touch()
    return paths


def mergekit_config(method: str, paths: dict[str, Path]) -> dict:
    direct, thinking, base = (str(paths[r]) for r in ("direct", "thinking", "base"))
    if method == "linear":
        models = [{"model": direct, "parameters": {"weight": 1 - LAM}}]
        models += [{"model": thinking, "parameters": {"weight": LAM}}]
        return {"merge_method": "linear", "models": models, "dtype": "bfloat16"}
    if method == "slerp":
        models = [{"model": direct}, {"model": thinking}]
        return {"merge_method": "slerp", "base_model": direct, "models": models,
                "parameters": {"t": LAM}, "dtype": "bfloat16"}  # fmt: skip
    if method == "ties":  # the same weights and density as spectrum's ties
        models = [{"model": direct, "parameters": {"weight": 1 - LAM, "density": 0.8}}]
        models += [{"model": thinking, "parameters": {"weight": LAM, "density": 0.8}}]
        return {"merge_method": "ties", "base_model": base, "models": models, "dtype": "bfloat16"}
    raise KeyError(method)


def measure(command: list[str], out: Path, hashes: Path | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS bytes of one command; its output is removed.

    ``hashes`` is spectrum's file-hash cache folder; by default a new empty one, so every
    spectrum figure includes hashing both parents (a first merge of these files)."""
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as fresh:
        env = {**os.environ, "SPECTRUM_CACHE": str(hashes or fresh)}
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, env=env
        )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{result.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    peak, cpu = result.stdout.split()[-2:]
    return seconds, float(cpu), int(peak) * 1024


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache: the next read comes from the disk."""
    for path in paths:
        for file in path.glob("*.safetensors"):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def disk_bound(inputs: list[Path], size: int, out: Path) -> float:
    """Seconds to read ``inputs`` from a cold cache and write ``size`` bytes: no merge of
    those parents into one output can take less."""
    evict(inputs)
    start = time.perf_counter()
    for path in inputs:
        for file in sorted(path.glob("*.safetensors")):
            with open(file, "rb", buffering=0) as stream:
                while stream.read(16 * 2**20):
                    pass
    out.mkdir(parents=True, exist_ok=True)
    block = os.urandom(16 * 2**20)
    with open(out / "bound.bin", "wb") as stream:
        for _ in range(0, size, len(block)):
            stream.write(block)
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def inputs_of(method: str, paths: dict[str, Path]) -> list[Path]:
    roles = ("direct", "thinking") if method in ("linear", "slerp") else tuple(paths)
    return [paths[role] for role in roles]


def _cells(size: int, run: tuple[float, float, int]) -> str:
    seconds, cpu, rss = run
    return f" {seconds:.1f} | {cpu:.1f} | {size / seconds / 1e9:.3f} | {rss / 2**20:.0f} |"


def _bounds(bound: float | None, ours: tuple, theirs: tuple | None) -> str:
    if bound is None:
        return " — | — | — |"
    mergekit = "—" if theirs is None else f"{theirs[0] / bound:.2f}"
    return f" {bound:.1f} | {ours[0] / bound:.2f} | {mergekit} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/spectrum-bench"))
    parser.add_argument("--methods", default="linear,slerp,ties,topk_replace")
    parser.add_argument("--warm", action="store_true", help="cached parents, no disk bound")
    args = parser.parse_args()
    paths = write_parents(args.cache)
    size = sum(f.stat().st_size for f in paths["direct"].glob("*.safetensors"))
    for path in paths.values():  # warm: no run pays for the disk; cold: evicted per run
        for file in path.glob("*.safetensors"):
            file.read_bytes()
    out = args.cache / "out"

    def prepare(method: str) -> None:
        if not args.warm:
            evict(inputs_of(method, paths))

    spectrum = [sys.executable, "-m", "spectrum", "merge"]
    mergekit = [str(Path(sys.executable).parent / "mergekit-yaml")]
    shards = len(list(paths["direct"].glob("*.safetensors")))
    print(
        f"parents: {size / 1e9:.2f} GB each (bf16, {shards} shards), λ = {LAM}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start\n"
    )
    print("| method | spectrum wall s | CPU s | GB/s | peak RSS MiB | mergekit wall s | CPU s "
          "| GB/s | peak RSS MiB | throughput × (wall) | CPU × | RSS × | bound s "
          "| spectrum ÷ bound | mergekit ÷ bound |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    # Start-up alone (imports, argument parsing): part of every figure below.
    ours, theirs = measure([*spectrum, "--help"], out), measure([*mergekit, "--help"], out)
    none = " — |" * 6
    print(f"| (start-up: --help) |{_cells(size, ours)}{_cells(size, theirs)}{none}")
    for method in args.methods.split(","):
        command = [*spectrum, "--method", method, "--lam", str(LAM), "--device", "cpu"]
        command += ["--direct", str(paths["direct"]), "--thinking", str(paths["thinking"])]
        if method not in ("linear", "slerp"):
            command += ["--base", str(paths["base"])]
        bound = None if args.warm else disk_bound(inputs_of(method, paths), size, out)
        prepare(method)
        ours = measure([*command, "--quiet", "--out", str(out)], out)
        row = f"| {method} |{_cells(size, ours)}"
        if method not in ("linear", "slerp", "ties"):  # mergekit has no global Top-K
            print(row + " — | — | — | — | — | — | — |" + _bounds(bound, ours, None), flush=True)
            continue
        config_file = args.cache / f"mergekit-{method}.yaml"
        config_file.write_text(yaml.safe_dump(mergekit_config(method, paths)))
        prepare(method)
        theirs = measure([*mergekit, str(config_file), str(out), "--quiet"], out)
        ratios = (
            f" {theirs[0] / ours[0]:.2f} | {theirs[1] / ours[1]:.2f} | {ours[2] / theirs[2]:.2f} |"
        )
        print(row + _cells(size, theirs) + ratios + _bounds(bound, ours, theirs), flush=True)
        if method in ("linear", "slerp"):  # the same merge again, parents' hashes remembered
            with tempfile.TemporaryDirectory() as hashes:
                measure([*command, "--quiet", "--out", str(out)], out, Path(hashes))
                prepare(method)
                again = measure([*command, "--quiet", "--out", str(out)], out, Path(hashes))
            print(f"| {method}, hashes remembered |{_cells(size, again)}{_cells(size, theirs)}"
                  f" {theirs[0] / again[0]:.2f} | {theirs[1] / again[1]:.2f} |"
                  f" {again[2] / theirs[2]:.2f} |{_bounds(bound, again, theirs)}",
                  flush=True)  # fmt: skip
    print(
        f"\ntorch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} at end"
    )


if __name__ == "__main__":
    main()
