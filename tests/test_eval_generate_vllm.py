"""The vLLM generator over the live merger decodes exactly as the transformers one does.

Like tests/test_live_vllm.py, this runs itself under the vLLM venv (``.venv-vllm``, made by
``./run.sh test``) when ``vllm`` is not importable here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import torch
from test_live_vllm import ROOT, save_pair, vllm_python

from spectrum.generate.batch import (
    DecodingSettings,
    TransformersGenerator,
    VllmGenerator,
    generator_for,
)
from spectrum.merge import MergeSpec

CONVERSATIONS = [[{"role": "user", "content": c}] for c in ("1+1", "what is 12*3?", "x")]


def test_vllm_generator_matches_transformers(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
        command = [vllm_python(), "-m", "pytest", __file__, "-x", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
        assert "1 passed" in done.stdout
        return
    compare(Path(tmp_path))


def compare(root: Path) -> None:
    from spectrum.live import LiveMerger
    from spectrum.live.vllm import VllmLiveMerger

    torch.set_num_threads(1)
    pair = save_pair(root)
    parents = (pair["direct"], pair["thinking"], pair["base"])
    engine = VllmLiveMerger.load(
        *parents, device="cpu", dtype="float32", max_model_len=128, enforce_eager=True
    )
    reference = LiveMerger.load(*parents, device="cpu")
    assert isinstance(generator_for(engine), VllmGenerator)
    assert isinstance(generator_for(reference), TransformersGenerator)
    settings = DecodingSettings(do_sample=False, max_new_tokens=8)
    texts = []
    for lam in (0.0, 0.5):
        engine.set(MergeSpec("linear", lam))
        reference.set(MergeSpec("linear", lam))
        fast = generator_for(engine).generate(CONVERSATIONS, settings, n=2)
        slow = generator_for(reference).generate(CONVERSATIONS, settings, n=2)
        assert [(g.text, g.n_tokens, g.finished) for g in fast] == [
            (g.text, g.n_tokens, g.finished) for g in slow
        ]
        assert all(g.finished or g.n_tokens == 8 for g in fast)
        texts.append([g.text for g in fast])
    assert texts[0] != texts[1]  # λ reached vLLM's weights
    baselines(engine)


def baselines(engine) -> None:
    """Budget forcing and NoThinking through vLLM keep their promises (a random model's
    text does not re-tokenize stably, so these are checked as properties, not equality)."""
    tokenizer = engine.llm.get_tokenizer()
    generator = generator_for(engine)
    budget = DecodingSettings(do_sample=False, max_new_tokens=12, think_budget=3)
    budget = replace(budget, think_end="</think>", answer_cue="", think_waits=1)
    for generation in generator.generate(CONVERSATIONS, budget, n=2):
        thought = generation.text.split("</think>")[0]
        # n_tokens counts the inserted delimiter (and a "Wait"), which the cap does not.
        assert generation.thinks and generation.n_tokens - generation.n_inserted <= 12
        assert generation.n_inserted >= 1
        assert len(tokenizer(thought, add_special_tokens=False)["input_ids"]) <= 3 + 4
    silent = DecodingSettings(do_sample=False, max_new_tokens=12, no_thinking=True)
    for generation in generator.generate(CONVERSATIONS, silent):
        assert "<think>" not in generation.text and "</think>" not in generation.text
