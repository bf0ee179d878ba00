"""An evaluation harness against `spectrum serve`: lm-eval's `local-chat-completions` model
runs a custom task of synthetic problems (a task YAML and a local JSONL file, nothing from
the hub) against a real server on the embedded pair, and what it logs as each problem's
output is what the server answers the same request from the `openai` client.

lm-eval pins packages the project venv must keep, so ``./run.sh test`` installs it in a
venv of its own (``<venv>-lmeval``) and exports ``SPECTRUM_LMEVAL_PYTHON``; without that
venv the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import openai
import pytest
from test_serve import child_env, serving

from spectrum.eval.benchmarks.synthetic import is_correct, make_problems

REPO = Path(__file__).resolve().parents[1]
LMEVAL_PYTHON = os.environ.get(
    "SPECTRUM_LMEVAL_PYTHON", str(REPO / ".venv-lmeval" / "bin" / "python")
)
MODEL = "linear@0.9"
KEY = "harness-key"
MAX_TOKENS = 160
SEED = 1234  # lm-eval's default request seed; greedy decoding does not use it
# Two problems of each level: short and long thinking, prompts of different lengths.
PROBLEMS = [p for level in range(1, 6) for p in make_problems(level, 2, seed=7)]

pytestmark = pytest.mark.skipif(
    not Path(LMEVAL_PYTHON).is_file(),
    reason=f"no lm-eval venv at {LMEVAL_PYTHON} (./run.sh test creates it)",
)

TASK = """\
task: spectrum_synthetic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_tokens}
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def _write_task(folder: Path) -> None:
    data = folder / "problems.jsonl"
    with data.open("w") as out:
        for problem in PROBLEMS:
            question = problem.messages[0]["content"]
            out.write(json.dumps({"question": question, "answer": problem.answer}) + "\n")
    (folder / "spectrum_synthetic.yaml").write_text(TASK.format(data=data, max_tokens=MAX_TOKENS))


def _lm_eval(url: str, tasks: Path, out: Path) -> list[dict]:
    """lm-eval's logged samples of the task, run against ``url``."""
    model_args = f"model={MODEL},base_url={url}/v1/chat/completions,num_concurrent=1,max_retries=1"
    command = [LMEVAL_PYTHON, "-m", "lm_eval", "--model", "local-chat-completions",
               "--model_args", model_args, "--tasks", "spectrum_synthetic",
               "--include_path", str(tasks), "--apply_chat_template", "--log_samples",
               "--output_path", str(out)]  # fmt: skip
    env = {**child_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out / "datasets"), "OPENAI_API_KEY": KEY}  # fmt: skip
    env.pop("PYTHONPATH")  # lm-eval imports nothing of the project
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = sorted(out.rglob("samples_spectrum_synthetic_*.jsonl"))
    assert len(logged) == 1, done.stderr[-3000:]
    return [json.loads(line) for line in logged[0].read_text().splitlines()]


def test_lm_eval_local_chat_completions_logs_what_the_server_answers(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write_task(tasks)
    # On a machine busy with other tests, loading the pair can take minutes.
    with serving(tmp_path, "--api-key", KEY, startup_s=600) as (_, url):
        samples = _lm_eval(url, tasks, tmp_path / "lm_eval")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0,
                               timeout=120)  # fmt: skip
        answers = {}
        for problem in PROBLEMS:
            reply = client.chat.completions.create(
                model=MODEL, messages=problem.messages, max_tokens=MAX_TOKENS, temperature=0,
                seed=SEED,
            )  # fmt: skip
            answers[problem.messages[0]["content"]] = reply.choices[0].message
    assert len(samples) == len(PROBLEMS)
    for sample in samples:
        expected = answers[sample["doc"]["question"]]
        # lm-eval keeps the message's content: the answer after the thinking.
        assert sample["resps"] == [[expected.content]]
        assert expected.content and expected.reasoning_content is not None
    # What the harness scores is a real answer: at λ = 0.9 the pair solves these.
    assert all(is_correct(s["resps"][0][0], s["target"]) for s in samples)
