"""Merge throughput: `spectrum merge` against mergekit, and against the cold-disk bound.

Writes a random bf16 base/direct/thinking triple (sharded safetensors) once into a cache
folder: Qwen3-0.6B's real shapes by default (``--shape qwen3-0.6b``: 0.75 B stored
parameters, the tied ``lm_head`` stored as the hub's files do), or the older 534 M-parameter
8-layer shape (``--shape qwen3-534m``). Each merge runs as a separate process; the bench
reports wall seconds, CPU seconds, GB/s (one parent's bytes per second) and peak RSS
(``wait4``'s ``ru_maxrss`` of the child), with spectrum ÷ mergekit ratios from the same run.
Every merge starts with its inputs evicted from the page cache (``posix_fadvise``
DONTNEED, no root needed), and ``÷ bound`` is its wall time over the cold-disk bound
measured in the same run the same way: reading the method's inputs (2 or 3 parents) cold,
plus writing one parent-sized file. ``--warm`` keeps the files cached instead (no bound).

``--repeats N`` runs the bound and each spectrum merge N times, alternating, and prints
medians (mergekit runs once: it is the slow side). ``--before TREE`` also runs another
source tree's ``spectrum merge`` (e.g. the main branch's checkout) in the same rounds, so
a change is measured against the code before it on the same machine load.
Usage:

    python bench/merge_throughput.py [--cache /tmp/spectrum-bench] [--methods linear,ties]
        [--shape qwen3-0.6b] [--repeats 3] [--before /path/to/other/checkout] [--no-mergekit]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
from spectrum.weights.shapes import QWEN3_0_6B, checkpoint_shapes

ROOT = Path(__file__).resolve().parents[1]
# ~534 M parameters: 1.07 GB per parent in bf16 (the shape of earlier runs).
SHAPE_534M = dict(
    hidden_size=2048, intermediate_size=6144, num_hidden_layers=8, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, vocab_size=32000, architectures=["Qwen3ForCausalLM"],
)  # fmt: skip
SHAPES = ("qwen3-0.6b", "qwen3-534m")
LAM = 0.7
# A bare Python parent: its child's ru_maxrss is the child's own peak (a child forked from a
# big process would report the parent's pre-exec pages too).
LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); "
    "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime); sys.exit(status >> 8)"
)
Run = tuple[float, float, int]  # wall s, CPU s, peak RSS bytes


def shape_of(shape: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """config.json fields and tensor name → shape; a stored tied head is named in both."""
    if shape == "qwen3-0.6b":  # the hub's checkpoint stores lm_head although it is tied
        return QWEN3_0_6B, checkpoint_shapes(QWEN3_0_6B, tied_head=True)
    config = tiny_config("qwen3", **SHAPE_534M)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config.to_dict(), {n: tuple(t.shape) for n, t in model.state_dict().items()}


def write_parents(cache: Path, shape: str) -> dict[str, Path]:
    """base, direct, thinking: direct/thinking = base + 5 % seeded noise. Written once."""
    config, shapes = shape_of(shape)
    root = cache / shape
    shards = plan_shards([(n, s, torch.bfloat16) for n, s in shapes.items()], 400 * 10**6)
    paths = {role: root / role for role in ("base", "direct", "thinking")}
    if (root / "complete").exists():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    for seed, (role, path) in enumerate(paths.items()):
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        writer = ShardWriter(path, shards)
        for name, dims, _ in (entry for shard in shards for entry in shard):
            # A stored tied head holds the embedding's values, as the hub's files do.
            tied = name == "lm_head.weight" and config.get("tie_word_embeddings")
            key = zlib.crc32(("model.embed_tokens.weight" if tied else name).encode())
            tensor = torch.randn(dims, generator=torch.Generator().manual_seed(key))
            if role != "base":
                noise = torch.Generator().manual_seed(key + seed * 7919)
                tensor += 0.05 * torch.randn(dims, generator=noise)
            writer.add(name, tensor.to(torch.bfloat16))
        writer.close()
    (root / "complete").touch()
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


def measure(command: list[str], out: Path, tree: Path | None = None) -> Run:
    """Wall seconds, CPU seconds and peak RSS bytes of one command; its output is removed.

    Every spectrum figure includes hashing the parents (a new, empty file-hash cache folder
    per run: a first merge of these files). ``tree``: the source tree it imports; it also
    runs there, since ``python -m`` looks in the working directory before PYTHONPATH."""
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as fresh:
        env = {**os.environ, "SPECTRUM_CACHE": fresh}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command],
            capture_output=True, text=True, env=env, cwd=tree,
        )  # fmt: skip
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
        stream.flush()
        os.fsync(stream.fileno())  # a merge's output is on disk when it ends: so is this
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def inputs_of(method: str, paths: dict[str, Path]) -> list[Path]:
    roles = ("direct", "thinking") if method in ("linear", "slerp") else tuple(paths)
    return [paths[role] for role in roles]


def median_run(runs: list[Run]) -> Run:
    return tuple(statistics.median(column) for column in zip(*runs, strict=True))  # type: ignore[return-value]


def _cells(size: int, run: Run | None) -> str:
    if run is None:
        return " — | — | — | — |"
    seconds, cpu, rss = run
    return f" {seconds:.1f} | {cpu:.1f} | {size / seconds / 1e9:.3f} | {rss / 2**20:.0f} |"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return "—" if numerator is None or denominator is None else f"{numerator / denominator:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/spectrum-bench"))
    parser.add_argument("--shape", choices=SHAPES, default="qwen3-0.6b")
    parser.add_argument("--methods", default="linear,slerp,ties,topk_replace")
    parser.add_argument("--repeats", type=int, default=1, help="spectrum runs (and bounds) each")
    parser.add_argument("--before", type=Path, help="another source tree, run alongside")
    parser.add_argument("--no-mergekit", action="store_true", help="spectrum rows only")
    parser.add_argument("--warm", action="store_true", help="cached parents, no disk bound")
    args = parser.parse_args()
    args.cache = args.cache.resolve()  # the merges run in the source trees' folders
    paths = write_parents(args.cache, args.shape)
    size = sum(f.stat().st_size for f in paths["direct"].glob("*.safetensors"))
    for path in paths.values():  # warm: no run pays for the disk; cold: evicted per run
        for file in path.glob("*.safetensors"):
            file.read_bytes()
    out = args.cache / "out"
    trees = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})

    def cold(method: str) -> None:
        if not args.warm:
            evict(inputs_of(method, paths))

    spectrum = [sys.executable, "-m", "spectrum", "merge"]
    mergekit = [str(Path(sys.executable).parent / "mergekit-yaml")]
    shards = len(list(paths["direct"].glob("*.safetensors")))
    print(
        f"{args.shape}: parents {size / 1e9:.2f} GB each (bf16, {shards} shards), λ = {LAM}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, medians of "
        f"{args.repeats} spectrum run(s), load average {os.getloadavg()[0]:.1f} at start\n"
    )
    print("| method | code | spectrum wall s | CPU s | GB/s | peak RSS MiB | RSS ÷ linear's "
          "| mergekit wall s | CPU s | GB/s | peak RSS MiB | bound s "
          "| spectrum ÷ bound | mergekit ÷ bound | mergekit wall ÷ spectrum wall |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    linear_rss: dict[str, float] = {}
    for method in args.methods.split(","):
        command = [*spectrum, "--method", method, "--lam", str(LAM), "--device", "cpu"]
        command += ["--direct", str(paths["direct"]), "--thinking", str(paths["thinking"])]
        if method not in ("linear", "slerp"):
            command += ["--base", str(paths["base"])]
        command += ["--quiet", "--out", str(out)]
        bounds: list[float] = []
        runs: dict[str, list[Run]] = {tree: [] for tree in trees}
        for _ in range(args.repeats):  # one round: the bound, then each tree, all cold
            if not args.warm:
                bounds.append(disk_bound(inputs_of(method, paths), size, out))
            for tree, root in trees.items():
                cold(method)
                runs[tree].append(measure(command, out, root))
        theirs = None
        if not args.no_mergekit and method in ("linear", "slerp", "ties"):
            config_file = args.cache / f"mergekit-{method}.yaml"
            config_file.write_text(yaml.safe_dump(mergekit_config(method, paths)))
            cold(method)
            theirs = measure([*mergekit, str(config_file), str(out), "--quiet"], out)
        bound = statistics.median(bounds) if bounds else None
        for tree in trees:
            ours = median_run(runs[tree])
            if method == "linear":
                linear_rss[tree] = ours[2]
            rss_ratio = _ratio(ours[2], linear_rss.get(tree))
            row = f"| {method} | {tree} |{_cells(size, ours)} {rss_ratio} |{_cells(size, theirs)}"
            row += f" {'—' if bound is None else f'{bound:.1f}'} |"
            row += f" {_ratio(ours[0], bound)} | {_ratio(theirs and theirs[0], bound)} |"
            print(row + f" {_ratio(theirs and theirs[0], ours[0])} |", flush=True)
        spread = {tree: [f"{r[0]:.1f}" for r in rs] for tree, rs in runs.items()}
        print(f"<!-- {method}: bounds {[f'{b:.1f}' for b in bounds]}, walls {spread} -->")
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
