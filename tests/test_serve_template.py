"""`spectrum serve` renders each merge's chat with the template sweeps give it: λ = 0 (the
direct parent) its own, any other merge the thinking parent's, as its export carries.

The pair: the embedded one with a thinking template that opens ``<think>`` in the
generation prompt (as Qwen3-4B-Thinking-2507's does), so the two templates differ in what
the model sees. References are built without the server: the prompt each template writes,
and the greedy reply of a plainly merged model (``LiveMerger``) or of the checkpoint itself
under that template.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from test_serve import child_env, serving
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.generate.batch import DecodingSettings, TransformersGenerator
from spectrum.generate.tags import THINK_START
from spectrum.live import LiveMerger
from spectrum.merge.spec import MergeSpec
from spectrum.serve.reasoning import split

REPO = Path(__file__).resolve().parents[1]
PAIR = REPO / "assets" / "pair"
TOKENS = 40
PROMPT = "What is 17 + 25?"
CONVERSATION = [{"role": "user", "content": PROMPT}]
GREEDY = DecodingSettings(do_sample=False, max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def opening_pair(tmp_path_factory) -> tuple[Path, Path]:
    thinking = tmp_path_factory.mktemp("pair") / "thinking"
    shutil.copytree(PAIR / "thinking", thinking)
    template = (thinking / "chat_template.jinja").read_text()
    opened = template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    assert opened != template
    (thinking / "chat_template.jinja").write_text(opened)
    return PAIR / "direct", thinking


@pytest.fixture(scope="module")
def client(opening_pair, tmp_path_factory):
    direct, thinking = opening_pair
    flags = ("--direct", str(direct), "--thinking", str(thinking))
    with serving(tmp_path_factory.mktemp("log"), *flags, startup_s=240) as (_, url):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)


def _prompt(path: Path) -> str:
    return AutoTokenizer.from_pretrained(path).apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize(("model", "lam", "role"), [("direct", 0.0, "direct"),
                                                    ("linear@0.5", 0.5, "thinking"),
                                                    ("thinking", 1.0, "thinking")])  # fmt: skip
def test_each_merge_runs_with_the_template_its_sweep_rows_have(
    client, opening_pair, model, lam, role
):
    torch.set_num_threads(1)
    direct, thinking = opening_pair
    paths = {"direct": direct, "thinking": thinking}
    prompt = _prompt(paths[role])
    assert prompt.endswith(f"assistant\n{THINK_START}\n") == (role == "thinking")
    # The reply of the merge itself, merged plainly, under the expected template.
    merger = LiveMerger.load(direct, thinking, device="cpu")
    merger.set(MergeSpec("linear", lam))
    template = AutoTokenizer.from_pretrained(paths[role]).chat_template
    want = TransformersGenerator(merger.model, merger.tokenizer).generate(
        [CONVERSATION], GREEDY, template=template
    )[0]
    reply = client.chat.completions.create(
        model=model, messages=CONVERSATION, temperature=0, max_tokens=TOKENS
    )
    message = reply.choices[0].message
    encoded = AutoTokenizer.from_pretrained(direct)(prompt, add_special_tokens=False)
    assert reply.usage.prompt_tokens == len(encoded["input_ids"])
    opened = role == "thinking"
    assert (message.reasoning_content, message.content or None) == split(want.text, opened=opened)
    if lam == 1.0:  # λ = 1 is the thinking checkpoint as its authors run it
        own = AutoModelForCausalLM.from_pretrained(thinking).eval()
        alone = TransformersGenerator(own, AutoTokenizer.from_pretrained(thinking))
        assert alone.generate([CONVERSATION], GREEDY)[0].text == want.text


def test_generate_gives_each_lam_the_template_serve_gives_it(client, opening_pair):
    """`spectrum generate --greedy` at λ 0, 0.5 and 1 answers as serve does for `direct`,
    `linear@0.5` and `thinking`: the same template per λ, so the same greedy text."""
    direct, thinking = opening_pair
    command = [sys.executable, "-m", "spectrum", "generate", "--direct", str(direct),
               "--thinking", str(thinking), "--lams", "0,0.5,1", "--prompt", PROMPT, "--greedy",
               "--max-new-tokens", str(TOKENS), "--device", "cpu", "--json"]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    for row, model in zip(rows, ("direct", "linear@0.5", "thinking"), strict=True):
        reply = client.chat.completions.create(
            model=model, messages=CONVERSATION, temperature=0, max_tokens=TOKENS
        )
        message = reply.choices[0].message
        opened = row["lam"] != 0  # the thinking template opens the block itself
        assert (message.reasoning_content, message.content or None) == split(
            row["text"], opened=opened
        ), model
