"""The dashboard as users reach it: `python app.py` in a subprocess on the embedded pair,
driven over HTTP with gradio_client."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pytest
from gradio_client import Client

from spectrum.dashboard.votes import read_votes
from spectrum.eval.benchmarks.synthetic import make_problems

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DB = REPO / "assets" / "spectrum.duckdb"
ALL_MODULES = ["attn", "mlp", "embed", "norm", "lm_head"]
STARTUP_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def launch_app(folder: Path, *args: str) -> Iterator[str]:
    """Run ``python app.py --port P --db folder/results.duckdb ARGS``; yield its URL."""
    port = free_port()
    log_path = folder / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"  # the CI machine has two cores for everything
    command = [sys.executable, "app.py", "--port", str(port)]
    command += ["--db", str(folder / "results.duckdb"), *args]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"app.py exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not serve {url} in {STARTUP_S} s")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app_server")


@pytest.fixture(scope="module")
def client(folder) -> Iterator[Client]:
    with launch_app(folder) as url:  # no --direct/--thinking: the embedded pair
        yield Client(url, verbose=False)


def set_merge(client: Client, method: str, lam: float) -> str:
    return client.predict(method, lam, "", ALL_MODULES, 0, api_name="/set_merge")


def chat(client: Client, prompt: str, tokens: int = 128) -> tuple[dict, dict, dict]:
    """The three chatbot values after a greedy turn (prompt + tokens within the embedded
    pair's 256 positions; its longest answer is under 80 tokens)."""
    out = client.predict(prompt, "greedy", tokens, 0.6, 0.95, 20, api_name="/chat")
    return out[:3]


def texts(chatbot: dict | list, *, reasoning: bool) -> list[str]:
    """Assistant message texts of a chatbot value; reasoning or answer parts. Streamed
    updates send only what changed: a whole component (a dict with its value), new
    messages alone (a list), or nothing for an unchanged column (a dict without a value)."""
    messages = chatbot if isinstance(chatbot, list) else chatbot.get("value") or []
    found = []
    for message in messages:
        is_reasoning = (message.get("metadata") or {}).get("title") == "Reasoning"
        if message["role"] == "assistant" and is_reasoning == reasoning:
            found.append(" ".join(part["text"] for part in message["content"]))
    return found


def footer(chatbot: dict) -> str:
    """The stats line under the last answer: [merge ·] N tokens · X tok/s."""
    return re.search(r"<sub>(.*)</sub>", texts(chatbot, reasoning=False)[-1]).group(1)


def without_footers(chatbot: dict) -> list[str]:
    """Every assistant text with the stats line (its tok/s varies run to run) removed."""
    answers = texts(chatbot, reasoning=True) + texts(chatbot, reasoning=False)
    return [re.sub(r"<sub>.*</sub>", "", text) for text in answers]


def tokens_of(chatbot: dict) -> int:
    return int(re.search(r"(\d+) tokens", footer(chatbot)).group(1))


def test_a_synthetic_question_gets_three_answers_and_the_thinker_thinks(client, folder):
    status = set_merge(client, "linear", 0.8)
    assert "linear · λ 0.80" in status
    problem = make_problems(3, 1, seed=7)[0]
    direct, merged, thinking = chat(client, problem.messages[0]["content"])
    for chatbot in (direct, merged, thinking):
        assert texts(chatbot, reasoning=False), chatbot  # every column answered
    assert merged["label"] == "Merged — linear · λ 0.80"
    assert footer(merged).startswith("linear · λ 0.80 · ")
    # The thinking parent reasons (a collapsible Reasoning block); the direct one does not.
    assert texts(thinking, reasoning=True) and not texts(direct, reasoning=True)
    assert tokens_of(thinking) > tokens_of(direct)
    assert "\\boxed{" in texts(direct, reasoning=False)[-1]

    client.predict(api_name="/vote_merged")
    (vote,) = read_votes(folder / "results.duckdb")
    assert (vote["choice"], vote["method"], vote["lam"]) == ("merged", "linear", 0.8)
    assert vote["prompt"] == problem.messages[0]["content"]


def plotted(values) -> list[float]:
    """Plot data as numbers: plotly ships numpy arrays as {"dtype", "bdata": base64}."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), values["dtype"]).tolist()
    return [float(value) for value in values]


def explorer_lams(out) -> tuple[list[float], dict]:
    """λ values on the accuracy-vs-λ figure (its line trace), and the Pareto figure."""
    pareto, accuracy = (json.loads(plot["plot"]) for plot in out[2:4])
    line = next(trace for trace in accuracy["data"] if trace.get("mode") == "lines+markers")
    return plotted(line["x"]), pareto


def test_explorer_draws_the_shipped_results_database(client):
    out = client.predict("assets/spectrum.duckdb", None, [], api_name="/explore")
    benchmark, methods = out[0]["value"], out[1]["value"]
    lams, pareto = explorer_lams(out)
    with duckdb.connect(str(SHIPPED_DB), read_only=True) as con:
        stored = con.execute(
            "SELECT DISTINCT lam FROM samples WHERE benchmark = ? AND method = ? ORDER BY lam",
            [benchmark, methods[0]],
        ).fetchall()
    assert lams == [lam for (lam,) in stored]
    assert any(trace.get("name") == "thinking parent" for trace in pareto["data"])
    # The researcher's statements and the attention × MLP heatmaps of the shipped sweep.
    findings, accuracy_heatmap = out[12], json.loads(out[13]["plot"])
    assert "linear stage 1" in findings and "stage 3" in findings
    assert "budget_forcing" in findings and "no_thinking" in findings
    assert accuracy_heatmap["data"][0]["type"] == "heatmap"


def test_sweep_tab_fills_a_database_the_explorer_then_shows(client, folder):
    db = str(folder / "sweep.duckdb")
    out = client.predict(db, ["linear"], "0,1", "synthetic", 1, 1, 48, api_name="/sweep")
    status, shown, bar = out[:3]
    assert status.startswith("Done: 10 samples generated") and shown == db
    assert '<progress value="10" max="10">' in bar and "linear · λ 1" in bar
    out = client.predict(db, None, [], api_name="/explore")
    lams, _ = explorer_lams(out)
    assert lams == [0.0, 1.0]
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (10,)


@pytest.mark.parametrize("grid", ["1:0:0.1", "0,1.5"])
def test_a_bad_sweep_grid_is_explained_without_cli_flags(client, folder, grid):
    db = str(folder / "never.duckdb")
    with pytest.raises(Exception, match="λ") as error:
        client.predict(db, ["linear"], grid, "synthetic", 1, 1, 48, api_name="/sweep")
    assert "--" not in str(error.value)  # the page has no flags to type
    assert not Path(db).exists()


def test_export_writes_a_model_folder(client, folder):
    out = folder / "exported"
    args = [str(out), False, "linear", 0.3, "", ALL_MODULES, 0]
    message = client.predict(*args, api_name="/export")
    assert str(out) in message
    record = json.loads((out / "merge_config.json").read_text())
    assert (record["config"]["method"], record["config"]["lam"]) == ("linear", 0.3)


@pytest.mark.parametrize(
    ("endpoint", "args"),
    [
        ("/explore", ("/etc/passwd", None, [])),
        ("/export", ("/etc/spectrum", False, "linear", 0.3, "", ALL_MODULES, 0)),
    ],
)
def test_paths_outside_the_allowed_folders_are_refused(client, endpoint, args):
    with pytest.raises(Exception, match="outside the allowed folders"):
        client.predict(*args, api_name=endpoint)


def test_a_release_from_another_page_mid_stream_never_mislabels(client):
    """Page A streams at λ=0.8 (a thinking merge: a long answer); page B releases its
    slider at 0.3 meanwhile."""
    page_a, page_b, page_c = (Client(client.src, verbose=False) for _ in range(3))
    set_merge(page_a, "linear", 0.8)
    prompt = make_problems(5, 1, seed=11)[0].messages[0]["content"]
    job = page_a.submit(prompt, "greedy", 200, 0.6, 0.95, 20, api_name="/chat")
    deadline = time.monotonic() + 120
    while not any(texts(out[1], reasoning=False) for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "the merged column never streamed"
        time.sleep(0.02)
    assert not job.done()  # A is mid-stream as B releases
    status = set_merge(page_b, "linear", 0.3)  # waits for A's generation to end
    assert "λ 0.30" in status
    merged = job.result()[1]
    assert merged["label"] == "Merged — linear · λ 0.80"
    assert texts(merged, reasoning=True)  # it did think: the stream was long, not a race lost
    # What A got is exactly what λ = 0.8 answers (greedy), asked again with nothing racing.
    set_merge(page_c, "linear", 0.8)
    alone = chat(page_c, prompt, 200)[1]
    assert alone["label"] == merged["label"]
    assert without_footers(alone) == without_footers(merged)


def test_the_embedded_pairs_base_makes_every_method_available(client):
    for method in ("dare", "ties", "emr", "task_arithmetic"):  # the methods that need θ_B
        assert f"{method} · λ 0.50" in set_merge(client, method, 0.5)


def test_the_start_up_log_names_the_pair_device_and_db(client, folder):
    (line,) = [
        line for line in (folder / "app.log").read_text().splitlines()
        if line.startswith("Thinking Spectrum — pair:")
    ]  # fmt: skip
    assert "assets/pair/direct" in line and "assets/pair/thinking" in line
    assert "device cpu" in line and str(folder / "results.duckdb") in line
