"""What the page adds to a chat turn: one 3-column turn through a real Gradio server,
against the same three answers from a plain ``generate`` loop with a streamer.

The server is ``python app.py`` on the embedded pair, reached with gradio_client (which
receives every streamed update, as a browser does). The plain loop runs the direct parent,
the linear merge at λ 0.5 and the thinking parent in three threads at once (as the page
does), each ``model.generate`` feeding a ``TextIteratorStreamer`` that is read to the end,
greedy, with the same prompts, templates and token limit. Both answer the same prompts and
produce the same tokens; the ratio of medians (turn ÷ plain) is what the page costs.

    python bench/page_stream.py [--repeats 5] [--write]   # --write: into RESULTS.md
"""

from __future__ import annotations

import argparse
import os
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
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

from spectrum.dashboard import DEFAULT_PAIR
from spectrum.eval.benchmarks.synthetic import make_problems
from spectrum.merge import merge_tensors
from spectrum.weights.checkpoint import open_checkpoint

REPO = Path(__file__).resolve().parents[1]
SECTION = "## The page's streaming cost (`bench/page_stream.py`)"
TOKENS = 160
LAM = 0.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "app.py", "--port", str(port), "--db", str(folder / "b.duckdb")]
    log = open(folder / "app.log", "w")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"app.py exited:\n{(folder / 'app.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return server, url
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit("app.py did not start in 300 s")


def page_turns(url: str, prompts: list[str]) -> list[float]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    modules = ["attn", "mlp", "norm", "embed"]
    client.predict("linear", LAM, "", modules, 0, api_name="/set_merge")
    seconds = []
    for prompt in prompts:
        start = time.perf_counter()
        client.predict(prompt, "greedy", TOKENS, 0.6, 0.95, 20, api_name="/chat")
        seconds.append(time.perf_counter() - start)
    return seconds


def plain_models() -> list[tuple]:
    """(model, tokenizer) for the direct parent, the linear merge at LAM, the thinking
    parent; the merge uses the direct parent's tokenizer, as the page's merged column does."""
    direct, thinking = DEFAULT_PAIR / "direct", DEFAULT_PAIR / "thinking"
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    merged = load(direct)
    d, t = open_checkpoint(direct), open_checkpoint(thinking)
    weights = {name: merge_tensors({name: d.get(name)}, {name: t.get(name)}, method="linear",
                                   lam=LAM)[name] for name in d.names()}  # fmt: skip
    merged.load_state_dict(weights, strict=False)
    direct_tokenizer = AutoTokenizer.from_pretrained(direct)
    return [
        (load(direct), direct_tokenizer),
        (merged, direct_tokenizer),
        (load(thinking), AutoTokenizer.from_pretrained(thinking)),
    ]


def plain_turn(models: list[tuple], prompt: str) -> float:
    def run(model, tokenizer) -> None:
        conversation = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=model.generate, kwargs=dict(
            **encoded, streamer=streamer, max_new_tokens=TOKENS, do_sample=False,
            pad_token_id=tokenizer.pad_token_id))  # fmt: skip
        worker.start()
        for _ in streamer:
            pass
        worker.join()

    start = time.perf_counter()
    with torch.inference_mode():
        threads = [threading.Thread(target=run, args=pair) for pair in models]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = parser.parse_args()
    prompts = [p.messages[0]["content"] for p in make_problems(3, args.repeats, seed=11)]
    folder = Path(tempfile.mkdtemp(prefix="chat-stream-"))
    server, url = start_server(folder)
    try:
        page_turns(url, prompts[:1])  # warm-up: the first turn compiles and caches
        turns = page_turns(url, prompts)
    finally:
        server.terminate()
        server.wait(timeout=30)
    models = plain_models()
    plain_turn(models, prompts[0])  # warm-up
    plain = [plain_turn(models, prompt) for prompt in prompts]
    ratio = statistics.median(turns) / statistics.median(plain)
    load = os.getloadavg()[0]
    lines = [
        SECTION,
        "",
        f"Embedded pair, linear λ {LAM}, greedy, ≤ {TOKENS} new tokens, {args.repeats} "
        f"level-3 prompts; {os.cpu_count()} CPUs, load {load:.1f} at the end.",
        "",
        "| | median s per 3-column turn | min | max |",
        "|---|---|---|---|",
        f"| page (Gradio server + client, every update streamed) | {statistics.median(turns):.3f} "
        f"| {min(turns):.3f} | {max(turns):.3f} |",
        f"| plain `generate` + streamer, three threads | {statistics.median(plain):.3f} "
        f"| {min(plain):.3f} | {max(plain):.3f} |",
        "",
        f"**page ÷ plain = {ratio:.2f}×** (goal ≤ 2×). Re-run: "
        f"`PYTHONPATH=. python bench/page_stream.py --repeats {args.repeats} --write`.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        results = REPO / "bench" / "RESULTS.md"
        body = results.read_text()
        if SECTION in body:
            before, rest = body.split(SECTION, 1)
            after = rest.split("\n## ", 1)
            body = before + text + ("\n\n## " + after[1] if len(after) > 1 else "\n")
        else:
            body = body.rstrip("\n") + "\n\n" + text + "\n"
        results.write_text(body)


if __name__ == "__main__":
    main()
