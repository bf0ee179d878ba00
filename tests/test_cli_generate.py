"""`spectrum generate` as a subprocess on the embedded pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.generate.batch import DecodingSettings, TransformersGenerator

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "assets" / "pair"
PROMPT = "What is 12 + 7?"


def _generate(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    parents = ("--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking"))
    command = [sys.executable, "-m", "spectrum", "generate", "--device", "cpu", *parents, *flags]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _alone(role: str) -> str:
    """The parent's own greedy answer, through the per-model generator."""
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(PAIR / role).eval()
    generator = TransformersGenerator(model, AutoTokenizer.from_pretrained(PAIR / role))
    settings = DecodingSettings(max_new_tokens=24, do_sample=False)
    return generator.generate([[{"role": "user", "content": PROMPT}]], settings)[0].text


def test_json_lines_one_per_lam_endpoints_are_the_parents():
    done = _generate("--lams", "0,0.3,0.6,1", "--prompt", PROMPT, "--greedy",
                     "--max-new-tokens", "24", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["lam"] for r in records] == [0.0, 0.3, 0.6, 1.0]
    for record in records:
        assert record["spec"] == dict(
            method="linear", lam=record["lam"], params={}, seed=0,
            scope=dict(layers=None, modules=None, lam_schedule=None),
        )  # fmt: skip
        assert 0 < record["n_tokens"] <= 24 and record["decoding"]["do_sample"] is False
    assert records[0]["text"] == _alone("direct")
    assert records[-1]["text"] == _alone("thinking")


def test_sampling_is_seeded_and_bad_input_is_one_line():
    flags = ("--lams", "0.5,1", "--prompt", PROMPT, "--max-new-tokens", "16", "--seed", "5")
    first, again = _generate(*flags), _generate(*flags)
    assert first.returncode == 0 and first.stdout == again.stdout
    assert "--- λ=0.5" in first.stdout
    # A method the spectrum model cannot batch is re-merged per λ, and said so once.
    slerp = _generate("--lams", "0,1", "--prompt", "x", "--method", "slerp",
                      "--max-new-tokens", "4")  # fmt: skip
    assert slerp.returncode == 0 and slerp.stderr.count("re-merging for each λ") == 1
    assert "--- λ=1" in slerp.stdout
    unknown = _generate("--lams", "0,1", "--prompt", "x", "--method", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith("spectrum generate: error:")
