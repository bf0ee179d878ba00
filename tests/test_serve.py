"""`spectrum serve` as users reach it: a real server process on the embedded pair, driven
by the real `openai` client (and raw HTTP where the client hides the status line)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoTokenizer

from spectrum.eval.benchmarks.synthetic import make_problems
from spectrum.generate.batch import DecodingSettings, generator_for
from spectrum.live import LiveMerger
from spectrum.merge.spec import MergeSpec
from spectrum.serve import reasoning
from spectrum.serve.names import (
    DEFAULT_EFFORT_LAMS,
    effort_lams_from_db,
    model_name,
    request_spec,
    smallest_reaching,
)

REPO = Path(__file__).resolve().parents[1]
PAIR = REPO / "assets" / "pair"
DB = REPO / "assets" / "spectrum.duckdb"
KEY = "test-key-123"
MAX_TOKENS = 48
STARTUP_S = 180
# One problem per level, then three more: prompts of different lengths (padded batches).
PROMPTS = [p.messages[0]["content"] for level in (1, 2, 3, 4) for p in make_problems(level, 2, 1)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@contextmanager
def serving(
    tmp: Path, *flags: str, startup_s: float = STARTUP_S
) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    log_path = tmp / f"serve-{port}.log"
    command = [sys.executable, "-m", "spectrum", "serve", "--device", "cpu", "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [*command, *flags], cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if server.poll() is not None:
                pytest.fail(f"serve exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.3)
        yield server, url
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def _generate_greedy() -> subprocess.Popen:
    """`spectrum generate --greedy --json` at λ 0, 0.5, 1 on PROMPTS[0], started now."""
    parents = ("--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking"))
    command = [sys.executable, "-m", "spectrum", "generate", "--device", "cpu", *parents,
               "--lams", "0,0.5,1", "--prompt", PROMPTS[0], "--greedy",
               "--max-new-tokens", str(MAX_TOKENS), "--json"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())  # fmt: skip


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, subprocess.Popen]]:
    """The server (with an API key, efforts from the shipped DB) and, loading beside it,
    the `spectrum generate` run its answers are compared with."""
    generate = _generate_greedy()
    tmp = tmp_path_factory.mktemp("serve")
    with serving(tmp, "--api-key", KEY, "--db", str(DB)) as (process, url):
        yield process, url, generate
    generate.kill()


@pytest.fixture(scope="module")
def server(started) -> tuple[subprocess.Popen, str]:
    return started[0], started[1]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def generated(started) -> dict[float, dict]:
    out, err = started[2].communicate(timeout=300)
    assert started[2].returncode == 0, err
    return {r["lam"]: r for r in map(json.loads, out.splitlines())}


def _expected_split(text: str) -> tuple[str | None, str | None]:
    """The qwen3 parser's split, written out: thought between the tags, answer after."""
    if "</think>" not in text:
        return None, text or None
    thought, answer = text.split("</think>", 1)
    return thought.removeprefix("<think>") or None, answer.lstrip("\n") or None


def _ask(client: openai.OpenAI, model: str, prompt: str, **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}],
        temperature=0, max_tokens=MAX_TOKENS, **extra,
    )  # fmt: skip


def _prompt_tokens(prompt: str) -> int:
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "direct")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(("model", "lam"), [("direct", 0.0), ("linear@0.5", 0.5),
                                            ("thinking", 1.0)])  # fmt: skip
def test_greedy_answers_equal_spectrum_generate(client, generated, model, lam):
    reply = _ask(client, model, PROMPTS[0])
    expected = generated[lam]
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content or None) == _expected_split(expected["text"])
    assert reply.usage.completion_tokens == expected["n_tokens"]
    assert reply.usage.prompt_tokens == _prompt_tokens(PROMPTS[0])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + expected["n_tokens"]
    assert reply.choices[0].finish_reason == ("stop" if expected["finished"] else "length")
    merge = reply.model_extra["spectrum"]["merge"]
    assert (merge["method"], merge["lam"], reply.model) == ("linear", lam, model)
    if lam == 1.0:  # the thinker thinks on this problem: the split is not vacuous
        assert message.reasoning_content and message.content


def test_stream_deltas_reassemble_the_answer_with_its_split(client):
    whole = _ask(client, "thinking", PROMPTS[0])
    chunks = list(_ask(client, "thinking", PROMPTS[0], stream=True,
                       stream_options={"include_usage": True}))  # fmt: skip
    thought = "".join(
        c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices
    )
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert thought == whole.choices[0].message.reasoning_content
    assert answer == whole.choices[0].message.content
    streamed = [c.choices[0].delta for c in chunks if c.choices]
    assert sum(bool(d.model_extra.get("reasoning_content")) for d in streamed) > 1
    assert sum(bool(d.content) for d in streamed) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_eight_concurrent_lams_equal_their_answers_one_at_a_time(client):
    lams = [i / 7 for i in range(8)]
    # Different prompts (lengths) at different λ, half greedy, half sampled from a seed:
    # rows join a running batch with padding, and still answer as they do alone.
    asks = [
        dict(model="linear", prompt=PROMPTS[i], lam=lams[i], sampled=i % 2 == 1) for i in range(8)
    ]

    def one(ask: dict):
        extra = dict(temperature=0.8, seed=7) if ask["sampled"] else dict(temperature=0)
        return client.chat.completions.create(
            model=ask["model"], messages=[{"role": "user", "content": ask["prompt"]}],
            max_tokens=MAX_TOKENS, extra_body={"lam": ask["lam"]},
            **extra,
        )  # fmt: skip

    together: list = [None] * 8
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        together[i] = one(asks[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alone = [one(ask) for ask in asks]
    for i, (mixed, single) in enumerate(zip(together, alone, strict=True)):
        assert mixed is not None, f"request {i} did not complete"
        assert mixed.model_extra["spectrum"]["merge"]["lam"] == lams[i]
        assert mixed.choices[0].message == single.choices[0].message, i
        assert mixed.usage == single.usage
    assert len({r.choices[0].message.content for r in alone}) > 1  # not one answer for all


def test_n_choices_stop_and_completions(client):
    reply = client.chat.completions.create(
        model="linear@0.6", messages=[{"role": "user", "content": PROMPTS[3]}],
        max_tokens=MAX_TOKENS, n=3, seed=1, temperature=1.0,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    tokens = reply.usage.completion_tokens
    assert tokens >= 3 and reply.usage.total_tokens == reply.usage.prompt_tokens + tokens
    # A stop string ends the answer before it: greedy, so the text is known.
    whole = _ask(client, "thinking", PROMPTS[0])
    text, answer = whole.choices[0].message.reasoning_content, whole.choices[0].message.content
    assert "{" not in text and "{" in answer  # the thought has no brace, the \\boxed{} has
    cut = _ask(client, "thinking", PROMPTS[0], stop=["{", "never"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.reasoning_content == text
    assert cut.choices[0].message.content == answer[: answer.index("{")]
    # /v1/completions: the raw prompt (here the chat template's) and no split.
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "direct")
    raw = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    completion = client.completions.create(
        model="thinking", prompt=raw, temperature=0, max_tokens=MAX_TOKENS
    )
    assert _expected_split(completion.choices[0].text) == (text, answer)


def test_reasoning_effort_and_lam_from_the_request(client):
    merge = lambda reply: reply.model_extra["spectrum"]["merge"]  # noqa: E731
    # Efforts come from the shipped DB (--db): see test_effort_lams_from_a_results_db.
    efforts = effort_lams_from_db(DB)
    medium = _ask(client, "linear", PROMPTS[0], reasoning_effort="medium")
    assert merge(medium)["lam"] == efforts["medium"]
    assert medium.model == f"linear@{efforts['medium']:g}"
    high = _ask(client, "linear", PROMPTS[0], reasoning_effort="high")
    assert merge(high)["lam"] == efforts["high"] != efforts["medium"]
    override = _ask(client, "linear@0.2,attn=0.9", PROMPTS[0], extra_body={"lam": 0.4})
    assert (merge(override)["lam"], merge(override)["module_lams"]) == (0.4, {"attn": 0.9})
    assert override.model == "linear@0.4,attn=0.9"


def test_other_methods_run_on_the_live_merger(client):
    reply = _ask(client, "slerp@0.6", PROMPTS[1])
    assert reply.model_extra["spectrum"]["served_by"].startswith("live merger")
    torch.set_num_threads(1)
    merger = LiveMerger.load(PAIR / "direct", PAIR / "thinking", device="cpu")
    merger.set(MergeSpec("slerp", 0.6))
    settings = DecodingSettings(max_new_tokens=MAX_TOKENS, do_sample=False)
    conversation = [{"role": "user", "content": PROMPTS[1]}]
    alone = generator_for(merger).generate([conversation], settings)[0]
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content or None) == _expected_split(alone.text)
    assert reply.usage.completion_tokens == alone.n_tokens


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (dict(model="nope"), 404, "does not exist"),
        (dict(model="linear@1.5"), 400, "outside [0, 1]"),
        (dict(model="linear@x"), 400, "not a number"),
        (dict(model="linear", lam=-0.1), 400, "outside [0, 1]"),
        (dict(model="linear", lam=0.5, reasoning_effort="low"), 400, "not both"),
        (dict(model="linear", reasoning_effort="extreme"), 400, "reasoning_effort"),
        (dict(model="direct", n=0), 400, "n must be"),
        (dict(model="direct", max_tokens=10**6), 400, "max_tokens"),
        (dict(model="direct", temperature="hot"), 400, "temperature"),
        (dict(model="direct", messages=[]), 400, "messages"),
        (dict(model="direct", logprobs=True), 400, "logprobs"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, needle):
    body = {"messages": [{"role": "user", "content": "1 + 1"}], **body}
    code, answer = _post(server[1], "/v1/chat/completions", body, KEY)
    assert code == status
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert needle in answer["error"]["message"]


def test_an_oversized_body_is_refused_before_it_is_read(server):
    """Only the headers are sent: the 413 must come from the declared length alone (a
    client still writing 2 MB when the server answers may see its pipe closed instead)."""
    url = urllib.parse.urlsplit(server[1])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    connection.putrequest("POST", "/v1/chat/completions")
    for name, value in (("Content-Type", "application/json"), ("Content-Length", 2 << 20),
                        ("Authorization", f"Bearer {KEY}")):  # fmt: skip
        connection.putheader(name, str(value))
    connection.endheaders()
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "bytes" in answer["error"]["message"]


def test_the_api_key_is_enforced(server, client):
    for key in (None, "wrong"):
        code, answer = _post(server[1], "/v1/chat/completions", {"model": "direct"}, key)
        assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server[1]}/v1", api_key="wrong", max_retries=0).models.list()
    names = [model.id for model in client.models.list()]
    assert names[:3] == ["direct", "thinking", "linear"] and "slerp" in names
    assert client.models.retrieve("linear@0.50,attn=0.8").id == "linear@0.5,attn=0.8"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope@0.5")


def test_effort_lams_from_a_results_db():
    # Accuracy rises 0.68 (λ 0) → 1.0; low targets 0.68 + 0.25·0.32 = 0.76: λ 0.55 is the
    # first from which every λ stays ≥ 0.76 (0.53: 0.66 and 0.54: 0.74 fall short).
    lams = [0.0, 0.1, 0.5, 0.53, 0.54, 0.55, 0.7, 0.8, 1.0]
    accuracy = [0.68, 0.70, 0.52, 0.66, 0.74, 0.78, 0.90, 1.0, 1.0]
    assert smallest_reaching(lams, accuracy, 0.25) == 0.55
    assert smallest_reaching(lams, accuracy, 1.0) == 0.8
    # A lucky λ below the rise is not confirmed: 0.1 reaches 0.6832, but 0.5 and 0.53 fall
    # back below it, so the answer is 0.54.
    assert smallest_reaching(lams, accuracy, 0.01) == 0.54


def test_shutdown_finishes_a_request_in_flight(server):
    """Last in this file: it stops the module's server. SIGINT while an answer streams:
    the server stops taking connections, lets the answer finish, then exits."""
    process, url = server
    answers: list = []

    def ask() -> None:
        body = {"model": "thinking", "max_tokens": MAX_TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[7]}]}  # fmt: skip
        answers.append(_post(url, "/v1/chat/completions", body, KEY))

    request = threading.Thread(target=ask)
    request.start()
    time.sleep(0.3)  # the request is in the server before the signal
    process.send_signal(signal.SIGINT)
    request.join(120)
    assert process.wait(60) == 0
    code, answer = answers[0]
    assert code == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length")
    with pytest.raises(OSError):  # and it is gone
        urllib.request.urlopen(f"{url}/health", timeout=5)


@pytest.mark.parametrize("opened", [False, True])
def test_reasoning_stream_equals_the_whole_split_for_any_chunking(opened):
    replies = ["<think>\nabc</think>\n\n42", "hello", "<think>abc", "abc</think>x", "",
               "  <thi", "a</th", "<think></think>\n\n\n", "x < y", "\n<think>a</think></think>b",
               "<think>a</thinkb", "</think>\nonly"]  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    for reply in replies:
        whole = reasoning.split(reply, opened=opened)
        for _ in range(30):
            stream, thought, answer, start = reasoning.ReasoningStream(opened=opened), "", "", 0
            while start < len(reply):
                end = start + int(torch.randint(1, 4, (1,), generator=generator))
                more_thought, more_answer = stream.feed(reply[start:end])
                thought, answer, start = thought + more_thought, answer + more_answer, end
            rest_thought, rest_answer = stream.finish()
            assert ((thought + rest_thought) or None, (answer + rest_answer) or None) == whole
    # The rule itself, written out: a thought opens the reply, the answer follows it.
    assert reasoning.split("<think>\nabc</think>\n\n42") == ("\nabc", "42")
    assert reasoning.split("<think>abc") == ("abc", None)  # truncated thought
    assert reasoning.split("abc</think>x") == (None, "abc</think>x")  # no thought opened
    assert reasoning.split("abc</think>x", opened=True) == ("abc", "x")  # opened by the prompt


def test_model_names_round_trip():
    for name in ("direct", "thinking", "linear@0.7", "slerp@0.6", "linear@0.5,attn=0.8"):
        assert model_name(request_spec(name, None, None, DEFAULT_EFFORT_LAMS)) == name
    assert model_name(request_spec("linear", None, None, DEFAULT_EFFORT_LAMS)) == "linear@0.6"
    assert model_name(request_spec("direct", 1.0, None, DEFAULT_EFFORT_LAMS)) == "thinking"


def _post(url: str, path: str, body: dict, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
